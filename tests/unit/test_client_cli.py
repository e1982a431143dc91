"""vaultctl in-process: argument parsing, stdin/prompt handling, output and exit codes.

RPCs go to a real grpc.aio server with scripted answers (``test_client_support``);
``main`` runs in a worker thread because the server lives on this event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import io
import json
import re
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, timestamp_pb2
from interakt.vault.v1 import audit_service_pb2 as audit_pb
from interakt.vault.v1 import config_service_pb2 as config_pb
from interakt.vault.v1 import resolver_service_pb2 as resolver_pb
from interakt.vault.v1 import secret_service_pb2 as secret_pb
from interakt.vault.v1 import usage_pb2
from vaultsvc_client import cli
from vaultsvc_client.errors import error_from_status

from tests.support.fake_vault import FakeVault, abort, start_fake

Code = grpc.StatusCode
SECRET = "p4ss-w0rd-do-not-print"


class FakeStdin(io.TextIOWrapper):
    def __init__(self, data: bytes = b"", tty: bool = False) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "VAULT_ADDR",
        "VAULT_TOKEN",
        "VAULT_CACERT",
        "VAULT_CLIENT_CERT",
        "VAULT_CLIENT_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.stdin", FakeStdin())


@pytest.fixture
async def fake() -> AsyncIterator[FakeVault]:
    vault, server = await start_fake()
    yield vault
    await server.stop(None)


@pytest.fixture
def dead_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


class Run:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
        self.monkeypatch = monkeypatch
        self.capsys = capsys

    async def __call__(
        self, *argv: str, stdin: bytes = b"", tty: bool = False
    ) -> tuple[int, str, str]:
        self.monkeypatch.setattr("sys.stdin", FakeStdin(stdin, tty))
        self.capsys.readouterr()
        code = await asyncio.to_thread(cli.main, list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(monkeypatch, capsys)


def at(fake: FakeVault, *argv: str) -> list[str]:
    return ["--addr", fake.address, "--token", "admin-tok", *argv]


def secret(name: str = "stripe_key", **fields: Any) -> secret_pb.Secret:
    message = secret_pb.Secret(name=name, etag=fields.pop("etag", "e1"), **fields)
    message.create_time.FromSeconds(1_700_000_000)
    message.update_time.FromSeconds(1_700_000_100)
    return message


# -- parser ------------------------------------------------------------------------------


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


def test_no_command_takes_a_secret_value_argument() -> None:
    parsers = dict(walk(cli.build_parser()))
    assert {("secrets", "create"), ("secrets", "update")} <= set(parsers)
    for path, parser in parsers.items():
        if path[:1] == ("configs",) or path[:1] == ("resolve",):
            continue  # config values are not secret; resolve inputs are tool inputs
        for action in parser._actions:
            takes_argument = action.nargs != 0 and not isinstance(
                action, argparse._SubParsersAction | argparse._HelpAction
            )
            if takes_argument and action.dest == "value_size" and action.type is not None:
                continue  # `load --value-size BYTES`: a length, typed as a number
            if takes_argument:
                assert "value" not in action.dest, (path, action.option_strings)
                assert not any("value" in opt for opt in action.option_strings), path


@pytest.mark.parametrize(
    "argv",
    [
        ["secrets", "create", "name", SECRET],
        ["secrets", "create", "name", "--value", SECRET],
        ["secrets", "create", "name", f"--value={SECRET}"],
        ["secrets", "update", "name", SECRET],
        ["secrets", "update", "name", "--value", SECRET],
        ["secrets", "create", "name", "--value-stdin=" + SECRET],
        ["secrets", "create", "name", "-" + SECRET],
    ],
)
async def test_a_value_argument_is_a_usage_error_and_not_echoed(run: Run, argv: list[str]) -> None:
    code, out, err = await run(*argv)
    assert code == cli.EXIT_USAGE
    assert SECRET not in out + err
    assert err.startswith("usage: ") and err.count("vaultctl: usage:") == 1


async def test_help_documents_every_exit_code(run: Run) -> None:
    code, out, _ = await run("--help")
    assert code == 0
    for number, meaning in cli.EXIT_CODES.items():
        assert re.search(rf"^  {number} +{re.escape(meaning)}$", out, re.MULTILINE), number
    for variable in ("VAULT_ADDR", "VAULT_TOKEN"):
        assert variable in out
    code, out, _ = await run("secrets", "delete", "--help")
    assert code == 0 and "exit codes:" in out and "--yes" in out


async def test_bare_groups_print_help_and_fail(run: Run) -> None:
    for argv in ([], ["secrets"], ["configs"]):
        code, _, err = await run(*argv)
        assert code == cli.EXIT_USAGE
        assert "usage:" in err


@pytest.mark.parametrize(
    ("code", "reason", "exit_code"),
    [
        (Code.NOT_FOUND, "SECRET_NOT_FOUND", 3),
        (Code.NOT_FOUND, "CONFIG_NOT_FOUND", 3),
        (Code.ALREADY_EXISTS, "ALREADY_EXISTS", 4),
        (Code.PERMISSION_DENIED, "PERMISSION_DENIED", 5),
        (Code.UNAUTHENTICATED, "UNAUTHENTICATED", 5),
        (Code.ABORTED, "ETAG_MISMATCH", 6),
        (Code.INVALID_ARGUMENT, "INPUT_MISSING", 7),
        (Code.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED", 7),
        (Code.UNAVAILABLE, "UNAVAILABLE", 8),
        (Code.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", 8),
        (Code.DATA_LOSS, "SECRET_UNREADABLE", 1),
        (Code.INTERNAL, "INTERNAL", 1),
    ],
)
def test_exit_code_mapping(code: grpc.StatusCode, reason: str, exit_code: int) -> None:
    assert cli.exit_code_for(error_from_status(code, "m", reason=reason)) == exit_code


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (Code.NOT_FOUND, 3),
        (Code.PERMISSION_DENIED, 5),
        (Code.UNAUTHENTICATED, 5),
        (Code.INVALID_ARGUMENT, 7),
        (Code.INTERNAL, 1),
    ],
)
async def test_server_errors_are_one_stderr_line(
    run: Run, fake: FakeVault, code: grpc.StatusCode, exit_code: int
) -> None:
    fake.fail("GetSecret", code, "something about\nstripe_key", code.name)
    status, out, err = await run(*at(fake, "secrets", "get", "stripe_key"))
    assert status == exit_code
    assert out == ""
    assert err == f"vaultctl: {code.name}: something about stripe_key\n"


async def test_unreachable_server_exits_8(run: Run, dead_address: str) -> None:
    code, _, err = await run("--addr", dead_address, "--timeout", "3", "secrets", "stats")
    assert code == cli.EXIT_UNAVAILABLE
    assert err.startswith("vaultctl: UNAVAILABLE: ")
    assert err.count("\n") == 1


async def test_json_errors_are_one_json_object_on_stderr(run: Run, fake: FakeVault) -> None:
    fake.fail(
        "GetSecret",
        Code.NOT_FOUND,
        "secret not found:\nstripe_key",
        "SECRET_NOT_FOUND",
        {"request_id": "req-7"},
    )
    for argv in (
        ("--json", "secrets", "get", "stripe_key"),
        ("secrets", "get", "stripe_key", "--json"),
    ):
        code, out, err = await run(*at(fake, *argv))
        assert (code, out) == (cli.EXIT_NOT_FOUND, "")
        assert json.loads(err) == {
            "code": "NOT_FOUND",
            "reason": "SECRET_NOT_FOUND",
            "message": "secret not found: stripe_key",
            "request_id": "req-7",
        }


async def test_json_errors_of_vaultctl_itself(run: Run, fake: FakeVault) -> None:
    code, out, err = await run(*at(fake, "--json", "secrets", "update", "a"))
    assert (code, out) == (cli.EXIT_USAGE, "")
    document = json.loads(err)
    assert (document["code"], document["reason"], document["request_id"]) == ("usage", None, None)
    assert document["message"].startswith("nothing to update")
    code, _, err = await run(*at(fake, "--json", "secrets", "list", "--limit", "x"))
    assert code == cli.EXIT_USAGE
    assert json.loads(err)["code"] == "usage"
    code, _, err = await run(*at(fake, "secrets", "list", "--limit", "x"))
    assert code == cli.EXIT_USAGE and err.startswith("usage: vaultctl secrets list")


# -- connection options ------------------------------------------------------------------


@pytest.mark.parametrize("token", ["Bearer abc123", "bearer  abc123", "BEARER abc123"])
async def test_a_bearer_prefix_is_refused_with_a_hint(
    run: Run, fake: FakeVault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    fake.reply("GetVaultStats", secret_pb.VaultStats())
    base = ["--addr", fake.address, "secrets", "stats"]
    code, _, err = await run(*base, "--token", token)
    assert code == cli.EXIT_USAGE
    assert "give the token alone" in err and "--token" in err
    assert "abc123" not in err  # the token itself is never echoed
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    code, _, err = await run(*base, "--token-file", str(token_file))
    assert code == cli.EXIT_USAGE and "token file" in err and "Bearer" in err
    monkeypatch.setenv("VAULT_TOKEN", token)
    code, _, err = await run(*base)
    assert code == cli.EXIT_USAGE and "VAULT_TOKEN" in err and "give the token alone" in err
    assert fake.calls == []  # refused before any call
    monkeypatch.setenv("VAULT_TOKEN", "bearer-like-but-one-word")
    assert (await run(*base))[0] == 0


async def test_token_sources_and_precedence(
    run: Run, fake: FakeVault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.reply("GetVaultStats", secret_pb.VaultStats())
    token_file = tmp_path / "token"
    token_file.write_text("file-tok\n")
    monkeypatch.setenv("VAULT_ADDR", fake.address)
    monkeypatch.setenv("VAULT_TOKEN", "env-tok")
    assert (await run("secrets", "stats"))[0] == 0
    assert (await run("secrets", "stats", "--token-file", str(token_file)))[0] == 0
    assert (await run("--token", "flag-tok", "secrets", "stats"))[0] == 0
    seen = [call.metadata.get("authorization") for call in fake.calls]
    assert seen == ["Bearer env-tok", "Bearer file-tok", "Bearer flag-tok"]

    code, _, err = await run("secrets", "stats", "--token", "a", "--token-file", str(token_file))
    assert code == cli.EXIT_USAGE and "either" in err
    code, _, err = await run("secrets", "stats", "--token-file", str(tmp_path / "missing"))
    assert code == cli.EXIT_USAGE and "token file" in err
    code, _, err = await run("secrets", "stats", "--tls", "--insecure")
    assert code == cli.EXIT_USAGE


async def test_no_token_reaches_the_server_without_authorization(run: Run, fake: FakeVault) -> None:
    fake.fail("GetVaultStats", Code.UNAUTHENTICATED, "missing bearer token", "UNAUTHENTICATED")
    code, _, err = await run("--addr", fake.address, "secrets", "stats")
    assert code == cli.EXIT_DENIED
    assert "authorization" not in fake.calls[0].metadata
    assert err == "vaultctl: UNAUTHENTICATED: missing bearer token\n"


def test_connection_options_are_listed_once() -> None:
    parsers = dict(walk(cli.build_parser()))
    top = parsers[()].format_help()
    for flag in ("--addr", "--token", "--ca-file", "--tls", "--timeout", "--json"):
        assert flag in top
    for env in ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_CACERT", "VAULT_CLIENT_CERT"):
        assert env in top
    for path, parser in parsers.items():
        if path:
            shown = parser.format_help()
            assert "--addr HOST" not in shown and "--ca-file" not in shown, path
            assert "see vaultctl --help" in shown, path


def test_every_argument_has_help() -> None:
    for path, parser in walk(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(choice.help for choice in action._choices_actions), path
                continue
            if action.help == argparse.SUPPRESS and path:
                assert action.dest in {"addr", "token", "token_file", "ca_file", "cert_file",
                                       "key_file", "server_name", "tls", "insecure", "timeout",
                                       "json"}, (path, action.dest)  # fmt: skip
                continue
            assert action.help, (path, action.option_strings or action.dest)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
async def test_completion_scripts(run: Run, shell: str, tmp_path: Path) -> None:
    code, out, _ = await run("completion", shell)
    assert code == 0
    for word in ("secrets", "configs", "resolve", "value-stdin", "addr", "trim-newline"):
        assert word in out, word
    if shell == "bash":
        script = tmp_path / "vaultctl.bash"
        script.write_text(out)
        checked = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-n", str(script)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr
        sourced = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", f"source {script} && complete -p vaultctl"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert sourced.returncode == 0 and "vaultctl" in sourced.stdout, sourced.stderr
    code, _, _ = await run("completion", "powershell")
    assert code == cli.EXIT_USAGE


# -- secrets -----------------------------------------------------------------------------


async def test_already_exists_names_the_existing_spelling(run: Run, fake: FakeVault) -> None:
    fake.fail(
        "CreateSecret",
        Code.ALREADY_EXISTS,
        "a secret named 'Stripe_Key' already exists (names are compared ignoring case)",
        "ALREADY_EXISTS",
    )
    fake.reply("GetSecret", secret("stripe_key"))
    code, _, err = await run(*at(fake, "secrets", "create", "Stripe_Key"), stdin=b"v")
    assert code == cli.EXIT_ALREADY_EXISTS
    assert "the existing secret is spelled 'stripe_key'" in err
    assert fake.calls_to("GetSecret")[0].request.name == "Stripe_Key"
    code, _, err = await run(*at(fake, "--json", "secrets", "create", "Stripe_Key"), stdin=b"v")
    document = json.loads(err)
    assert (document["reason"], document["existing_name"]) == ("ALREADY_EXISTS", "stripe_key")
    # the lookup failing leaves the server's error as it was
    fake.fail("GetSecret", Code.PERMISSION_DENIED, "no", "PERMISSION_DENIED")
    code, _, err = await run(*at(fake, "secrets", "create", "Stripe_Key"), stdin=b"v")
    assert code == cli.EXIT_ALREADY_EXISTS and "spelled" not in err


async def test_create_reads_the_value_from_stdin_verbatim(run: Run, fake: FakeVault) -> None:
    fake.reply("CreateSecret", secret())
    code, out, err = await run(
        *at(fake, "secrets", "create", "stripe_key", "--description", "Stripe"),
        stdin=SECRET.encode(),
    )
    assert code == 0, err
    request = fake.calls[0].request
    assert (request.name, request.value, request.description) == ("stripe_key", SECRET, "Stripe")
    assert out == "created secret stripe_key (etag e1)\n"
    assert SECRET not in out + err


async def test_create_keeps_a_trailing_newline_unless_asked(run: Run, fake: FakeVault) -> None:
    fake.reply("CreateSecret", secret())
    code, _, err = await run(*at(fake, "secrets", "create", "a"), stdin=b"line\n")
    assert code == 0
    assert "newline" in err
    code, _, err = await run(*at(fake, "secrets", "create", "a", "--trim-newline"), stdin=b"v\r\n")
    assert code == 0 and err == ""
    assert [c.request.value for c in fake.calls] == ["line\n", "v"]


@pytest.mark.parametrize(
    ("stdin", "exit_code", "message"),
    [
        (b"", 2, "empty value"),
        (b"\xff\xfe", 2, "not valid UTF-8"),
        (b"x" * (64 * 1024 + 1), 7, "larger than"),
    ],
)
async def test_create_rejects_bad_stdin_before_calling(
    run: Run, fake: FakeVault, stdin: bytes, exit_code: int, message: str
) -> None:
    code, _, err = await run(*at(fake, "secrets", "create", "a"), stdin=stdin)
    assert code == exit_code
    assert message in err
    assert fake.calls == []


async def test_create_on_a_terminal_prompts_twice_without_echo(
    run: Run, fake: FakeVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.reply("CreateSecret", secret())
    answers = iter([SECRET, SECRET, SECRET, "typo"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream: Any = None) -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    code, out, err = await run(*at(fake, "secrets", "create", "a"), tty=True)
    assert code == 0
    assert fake.calls[0].request.value == SECRET
    assert len(prompts) == 2
    code, out, err = await run(*at(fake, "secrets", "create", "a"), tty=True)
    assert code == cli.EXIT_USAGE
    assert "do not match" in err
    assert len(fake.calls) == 1
    assert SECRET not in out + err


async def test_update_keeps_the_value_unless_asked(run: Run, fake: FakeVault) -> None:
    fake.reply("UpdateSecret", secret(etag="e2"))
    assert (await run(*at(fake, "secrets", "update", "a", "--description", "new")))[0] == 0
    assert (await run(*at(fake, "secrets", "update", "a", "--clear-description")))[0] == 0
    code, _, _ = await run(
        *at(fake, "secrets", "update", "a", "--value-stdin", "--etag", "e1"), stdin=b"v2"
    )
    assert code == 0
    described, cleared, revalued = (c.request for c in fake.calls)
    assert not described.HasField("value") and described.description == "new"
    assert not cleared.HasField("value")
    assert cleared.HasField("description") and cleared.description == ""
    assert revalued.value == "v2" and not revalued.HasField("description")
    assert revalued.etag == "e1"


async def test_update_with_nothing_to_change_is_a_usage_error(run: Run, fake: FakeVault) -> None:
    code, _, err = await run(*at(fake, "secrets", "update", "a"), stdin=b"ignored")
    assert code == cli.EXIT_USAGE
    assert "nothing to update" in err
    assert fake.calls == []


async def test_update_etag_mismatch_exits_6(run: Run, fake: FakeVault) -> None:
    fake.fail("UpdateSecret", Code.ABORTED, "etag mismatch for secret a", "ETAG_MISMATCH")
    code, _, err = await run(*at(fake, "secrets", "update", "a", "--description", "d"))
    assert code == cli.EXIT_ETAG_MISMATCH
    assert err == "vaultctl: ABORTED: etag mismatch for secret a\n"


async def test_delete_without_terminal_or_yes_refuses(run: Run, fake: FakeVault) -> None:
    code, out, err = await run(*at(fake, "secrets", "delete", "stripe_key"), stdin=b"stripe_key\n")
    assert code == cli.EXIT_USAGE
    assert "--yes" in err and err.count("\n") == 1
    assert out == ""
    assert fake.calls == []


async def test_delete_confirms_by_typing_the_name(run: Run, fake: FakeVault) -> None:
    fake.reply("DeleteSecret", empty_pb2.Empty())
    code, _, err = await run(
        *at(fake, "secrets", "delete", "stripe_key"), stdin=b"nope\n", tty=True
    )
    assert code == cli.EXIT_USAGE and "did not match" in err
    assert fake.calls == []
    code, out, err = await run(
        *at(fake, "secrets", "delete", "stripe_key"), stdin=b"stripe_key\n", tty=True
    )
    assert code == 0
    assert "Type its name" in err
    assert out == "deleted secret stripe_key\n"
    code, out, _ = await run(*at(fake, "--json", "secrets", "delete", "other", "--yes"))
    assert code == 0 and json.loads(out) == {"deleted": "other", "purged": False, "forced": False}
    assert [c.request.name for c in fake.calls] == ["stripe_key", "other"]


async def test_get_and_list_output(run: Run, fake: FakeVault) -> None:
    fake.reply("GetSecret", secret(description="Stripe\x1b[31m live"))
    fake.reply(
        "ListSecrets",
        secret_pb.ListSecretsResponse(
            secrets=[secret("a"), secret("b", description="two")], total_size=2
        ),
    )
    code, out, _ = await run(*at(fake, "secrets", "get", "stripe_key"))
    assert code == 0
    assert "stripe_key" in out and "2023-11-14T22:13:20Z" in out
    assert "\x1b" not in out and "\\x1b[31m" in out  # terminal escapes shown inert
    code, out, _ = await run(*at(fake, "secrets", "get", "stripe_key", "--json"))
    document = json.loads(out)
    assert document == {
        "name": "stripe_key",
        "description": "Stripe\x1b[31m live",
        "create_time": "2023-11-14T22:13:20Z",
        "update_time": "2023-11-14T22:15:00Z",
        "etag": "e1",
        "allowed_hosts": [],
        "current_version": 0,
        "delete_time": None,
        "purge_time": None,
        "last_resolve_time": None,
        "resolve_count": 0,
    }
    code, out, err = await run(*at(fake, "secrets", "list", "--contains", "A"))
    assert code == 0
    assert out.splitlines()[0].split() == ["NAME", "DESCRIPTION", "UPDATED", "LAST", "USED", "ETAG"]
    assert out.splitlines()[1].split()[-2] == "never"
    assert "2 of 2" in err
    assert fake.calls[-1].request.name_contains == "A"
    code, out, _ = await run(*at(fake, "--json", "secrets", "list"))
    listing = json.loads(out)
    assert [s["name"] for s in listing["secrets"]] == ["a", "b"]
    assert listing["total_size"] == 2


async def test_list_follows_pages_up_to_the_limit(run: Run, fake: FakeVault) -> None:
    async def pages(request: Any, context: Any) -> Any:
        start = int(request.page_token or 0)
        names = [f"s{i}" for i in range(start, min(start + 2, 5))]
        token = str(start + 2) if start + 2 < 5 else ""
        return secret_pb.ListSecretsResponse(
            secrets=[secret(n) for n in names], next_page_token=token, total_size=5
        )

    fake.handlers["ListSecrets"] = pages
    _, out, _ = await run(*at(fake, "--json", "secrets", "list", "--page-size", "2"))
    assert [s["name"] for s in json.loads(out)["secrets"]] == [f"s{i}" for i in range(5)]
    _, out, _ = await run(
        *at(fake, "--json", "secrets", "list", "--page-size", "2", "--limit", "3")
    )
    assert [s["name"] for s in json.loads(out)["secrets"]] == ["s0", "s1", "s2"]


async def test_stats(run: Run, fake: FakeVault) -> None:
    stats = secret_pb.VaultStats(total_secrets=7)
    fake.reply("GetVaultStats", stats)
    _, out, _ = await run(*at(fake, "secrets", "stats", "--json"))
    assert json.loads(out) == {"total_secrets": 7, "last_update_time": None}
    _, out, _ = await run(*at(fake, "secrets", "stats"))
    assert "never" in out and "7" in out


# -- configs -----------------------------------------------------------------------------


async def test_configs_commands(run: Run, fake: FakeVault) -> None:
    fake.reply("PutConfigValue", config_pb.ConfigValue(key="base_url", value="https://x"))
    fake.reply("GetConfigValue", config_pb.ConfigValue(key="base_url", value="https://x"))
    fake.reply(
        "ListConfigValues",
        config_pb.ListConfigValuesResponse(
            config_values=[config_pb.ConfigValue(key="base_url", value="https://x")], total_size=1
        ),
    )
    fake.reply("DeleteConfigValue", empty_pb2.Empty())
    assert (await run(*at(fake, "configs", "put", "base_url", "https://x")))[0] == 0
    assert (await run(*at(fake, "configs", "put", "base_url"), stdin=b"https://y"))[0] == 0
    code, out, _ = await run(*at(fake, "configs", "get", "base_url", "--json"))
    assert json.loads(out)["value"] == "https://x"
    code, out, _ = await run(*at(fake, "configs", "list", "--contains", "url"))
    assert "https://x" in out
    code, _, err = await run(*at(fake, "configs", "delete", "base_url"))
    assert code == cli.EXIT_USAGE and "--yes" in err
    assert (await run(*at(fake, "configs", "delete", "base_url", "-y")))[0] == 0
    puts = [c.request.value for c in fake.calls_to("PutConfigValue")]
    assert puts == ["https://x", "https://y"]
    assert fake.calls_to("ListConfigValues")[0].request.key_contains == "url"


# -- templates ---------------------------------------------------------------------------


def test_template_documents() -> None:
    structured = cli.parse_template_document(
        {
            "fields": [
                {"key": "url", "template": "https://h/{{input.id}}", "encoding": "URL"},
                {"key": "body", "template": "{}"},
            ],
            "inputs": {"id": "7"},
            "tool": "orders",
        }
    )
    assert [(f.key, f.encoding) for f in structured.fields] == [
        ("url", resolver_pb.ENCODING_URL),
        ("body", resolver_pb.ENCODING_RAW),
    ]
    assert (structured.inputs, structured.tool) == ({"id": "7"}, "orders")
    plain = cli.parse_template_document({"url": "{{secret:a}}", "fields": "literal key"})
    assert [(f.key, f.template, f.encoding) for f in plain.fields] == [
        ("url", "{{secret:a}}", resolver_pb.ENCODING_RAW),
        ("fields", "literal key", resolver_pb.ENCODING_RAW),
    ]
    for bad in (
        [],
        {},
        {"url": 3},
        {"fields": [{"key": "a"}]},
        {"fields": [{"key": "a", "template": "t", "encoding": "ROT13"}]},
        {"fields": ["x"]},
        {"fields": [{"key": "a", "template": "t"}], "inputs": {"a": 1}},
        {"fields": [{"key": "a", "template": "t"}], "extra": 1},
    ):
        with pytest.raises(cli.CliError):
            cli.parse_template_document(bad)


def check_response(with_problem: bool) -> resolver_pb.CheckTemplateResponse:
    response = resolver_pb.CheckTemplateResponse(
        references=[
            resolver_pb.FieldReferences(
                key="url", secret_names=["orderskey"], config_keys=["base"], input_names=["id"]
            )
        ]
    )
    if with_problem:
        response.problems.append(
            resolver_pb.TemplateProblem(
                field_key="url",
                kind=resolver_pb.PROBLEM_KIND_SECRET_NOT_FOUND,
                placeholder="{{secret:orderskey}}",
                name="orderskey",
                message="secret not found: orderskey",
                offset=12,
            )
        )
    return response


async def test_check_reports_problems_and_exits_9(
    run: Run, fake: FakeVault, tmp_path: Path
) -> None:
    template = tmp_path / "tool.json"
    template.write_text(
        json.dumps({"fields": [{"key": "url", "template": "x", "encoding": "url"}]})
    )
    fake.reply("CheckTemplate", check_response(with_problem=True))
    code, out, _ = await run(*at(fake, "check", str(template)))
    assert code == cli.EXIT_PROBLEMS
    assert out.splitlines()[:2] == [
        "url  URL  secrets: orderskey  configs: base  inputs: id",
        "  SECRET_NOT_FOUND at 12: secret not found: orderskey",
    ]
    assert out.count("url") == 1  # the field key is said once, above its problems
    code, out, _ = await run(*at(fake, "check", str(template), "--json"))
    document = json.loads(out)
    assert code == cli.EXIT_PROBLEMS and document["ok"] is False
    [field] = document["fields"]
    assert (field["key"], field["encoding"], field["secret_names"]) == ("url", "URL", ["orderskey"])
    [problem] = field["problems"]
    assert problem == {
        "kind": "SECRET_NOT_FOUND",
        "placeholder": "{{secret:orderskey}}",
        "name": "orderskey",
        "message": "secret not found: orderskey",
        "offset": 12,
        "severity": "ERROR",
        "suggestions": [],
    }
    fake.reply("CheckTemplate", check_response(with_problem=False))
    code, out, _ = await run(*at(fake, "check", "-"), stdin=b'{"url": "x"}')
    assert code == 0 and "no problems" in out


async def test_check_warnings_fail_only_with_strict(
    run: Run, fake: FakeVault, tmp_path: Path
) -> None:
    template = tmp_path / "tool.json"
    template.write_text('{"body": "{{secrets:orders_key}}"}')
    response = resolver_pb.CheckTemplateResponse(
        references=[resolver_pb.FieldReferences(key="body")],
        problems=[
            resolver_pb.TemplateProblem(
                field_key="body",
                kind=resolver_pb.PROBLEM_KIND_NEAR_MISS_PLACEHOLDER,
                placeholder="{{secrets:orders_key}}",
                name="orders_key",
                message="body: not a placeholder; did you mean {{secret:orders_key}}?",
                severity=resolver_pb.SEVERITY_WARNING,
                suggestions=["{{secret:orders_key}}"],
            )
        ],
    )
    fake.reply("CheckTemplate", response)
    code, out, _ = await run(*at(fake, "check", str(template)))
    assert code == cli.EXIT_OK
    assert "  NEAR_MISS_PLACEHOLDER (warning) at 0: not a placeholder" in out
    assert out.rstrip().endswith("0 error(s), 1 warning(s)")
    fake.reply("CheckTemplate", response)
    code, out, _ = await run(*at(fake, "check", "--strict", str(template), "--json"))
    document = json.loads(out)
    assert code == cli.EXIT_PROBLEMS and document["ok"] is False
    assert (document["errors"], document["warnings"]) == (0, 1)
    assert document["fields"][0]["problems"][0]["suggestions"] == ["{{secret:orders_key}}"]


async def test_check_unreadable_or_invalid_file(run: Run, fake: FakeVault, tmp_path: Path) -> None:
    code, _, err = await run(*at(fake, "check", str(tmp_path / "missing.json")))
    assert code == cli.EXIT_USAGE and "cannot read" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    code, _, err = await run(*at(fake, "check", str(bad)))
    assert code == cli.EXIT_USAGE and "not valid JSON" in err
    assert fake.calls == []


async def test_resolve_prints_fields_and_passes_inputs(
    run: Run, fake: FakeVault, tmp_path: Path
) -> None:
    template = tmp_path / "tool.json"
    template.write_text(
        json.dumps(
            {
                "fields": [{"key": "auth", "template": "Bearer {{secret:s}}"}],
                "inputs": {"id": "1", "keep": "k"},
                "tool": "file-tool",
            }
        )
    )
    fake.reply(
        "ResolveTemplate",
        resolver_pb.ResolveTemplateResponse(
            fields=[resolver_pb.ResolvedField(key="auth", value=f"Bearer {SECRET}")]
        ),
    )
    code, out, err = await run(
        *at(fake, "resolve", str(template), "--input", "id=2", "--input", "eq=a=b", "--tool", "t1")
    )
    assert code == 0, err
    assert out == f"auth: Bearer {SECRET}\n"
    assert SECRET not in err
    request = fake.calls[0].request
    assert dict(request.inputs) == {"id": "2", "keep": "k", "eq": "a=b"}
    assert request.tool == "t1"
    code, out, _ = await run(*at(fake, "--json", "resolve", str(template)))
    assert json.loads(out) == {"fields": [{"key": "auth", "value": f"Bearer {SECRET}"}]}
    assert fake.calls[1].request.tool == "file-tool"
    code, _, err = await run(*at(fake, "resolve", str(template), "--input", "novalue"))
    assert code == cli.EXIT_USAGE and "NAME=VALUE" in err


async def test_resolve_missing_secrets_exit_3(run: Run, fake: FakeVault, tmp_path: Path) -> None:
    template = tmp_path / "t.json"
    template.write_text('{"u": "{{secret:a}}{{secret:b}}"}')
    fake.fail(
        "ResolveTemplate",
        Code.NOT_FOUND,
        "secret not found: a, b",
        "SECRET_NOT_FOUND",
        {"names": "a,b"},
    )
    code, out, err = await run(*at(fake, "resolve", str(template)))
    assert (code, out) == (cli.EXIT_NOT_FOUND, "")
    assert err == "vaultctl: NOT_FOUND: secret not found: a, b\n"


# -- audit -------------------------------------------------------------------------------


async def test_audit_filters_and_output(run: Run, fake: FakeVault) -> None:
    event = audit_pb.AuditEvent(
        principal="ops",
        method="/interakt.vault.v1.SecretService/CreateSecret",
        outcome="OK",
        secret_names=["stripe_key"],
        request_id="r1",
    )
    event.time.FromSeconds(1_700_000_000)
    fake.reply("ListAuditEvents", audit_pb.ListAuditEventsResponse(events=[event]))
    code, out, _ = await run(*at(fake, "audit", "--secret", "stripe_key", "--principal", "ops"))
    assert code == 0
    assert "SecretService/CreateSecret" in out and "stripe_key" in out
    request = fake.calls[0].request
    assert (request.secret_name, request.principal) == ("stripe_key", "ops")
    code, out, _ = await run(*at(fake, "audit", "--json"))
    events = json.loads(out)["events"]
    assert events[0]["method"] == "/interakt.vault.v1.SecretService/CreateSecret"
    assert events[0]["time"] == "2023-11-14T22:13:20Z"


async def test_identify_reads_the_candidate_from_stdin_and_never_prints_it(
    run: Run, fake: FakeVault
) -> None:
    fake.reply(
        "IdentifySecretValue",
        secret_pb.IdentifySecretValueResponse(
            matches=[secret_pb.ValueMatch(name="orders_key", version=2, current=False)]
        ),
    )
    code, out, err = await run(
        *at(fake, "identify", "--trim-newline"), stdin=SECRET.encode() + b"\n"
    )
    assert code == 0
    assert fake.calls[-1].request.value == SECRET
    assert out.splitlines()[0].split() == ["NAME", "VERSION", "CURRENT"]
    assert "orders_key" in out and SECRET not in out + err
    fake.reply("IdentifySecretValue", secret_pb.IdentifySecretValueResponse())
    code, out, _ = await run(*at(fake, "--json", "identify"), stdin=b"near-miss")
    assert code == 0 and json.loads(out) == {"matches": []}
    code, _, err = await run(*at(fake, "identify"), stdin=b"")
    assert code == 2 and "empty candidate" in err


async def test_versions_rollback_restore_and_destroy_commands(run: Run, fake: FakeVault) -> None:
    older = secret_pb.SecretVersion(
        version=1, state=secret_pb.SecretVersion.STATE_DESTROYED, created_by="ops"
    )
    newer = secret_pb.SecretVersion(
        version=2, state=secret_pb.SecretVersion.STATE_ENABLED, current=True, created_by="ops"
    )
    fake.reply("ListSecretVersions", secret_pb.ListSecretVersionsResponse(versions=[newer, older]))
    code, out, _ = await run(*at(fake, "--json", "secrets", "versions", "k"))
    assert code == 0
    rows = json.loads(out)["versions"]
    assert [(r["version"], r["state"], r["current"]) for r in rows] == [
        (2, "enabled", True),
        (1, "destroyed", False),
    ]
    fake.reply("RollbackSecret", secret("k", current_version=3))
    code, out, _ = await run(*at(fake, "secrets", "rollback", "k", "1", "--etag", "e9"))
    assert code == 0 and "as version 3" in out
    request = fake.calls[-1].request
    assert (request.name, request.version, request.etag) == ("k", 1, "e9")
    fake.reply("RestoreSecret", secret("k"))
    code, out, _ = await run(*at(fake, "secrets", "restore", "k"))
    assert code == 0 and "restored secret k" in out
    fake.reply("DestroySecretVersion", empty_pb2.Empty())
    code, out, _ = await run(*at(fake, "secrets", "destroy-version", "k", "1", "--yes"))
    assert code == 0 and fake.calls[-1].request.version == 1
    fake.reply("DeleteSecret", empty_pb2.Empty())
    code, out, _ = await run(*at(fake, "secrets", "delete", "k", "--purge", "--yes"))
    assert code == 0 and fake.calls[-1].request.purge


IN_USE = {"tools": "payments,invoices", "last_resolve_time": "2026-11-29T05:31:12.500000Z"}


async def test_delete_in_use_refuses_scripts_and_asks_a_terminal_again(
    run: Run, fake: FakeVault
) -> None:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not request.force:
            await abort(
                context, Code.FAILED_PRECONDITION, "secret x is in use", "SECRET_IN_USE", IN_USE
            )
        return empty_pb2.Empty()

    fake.handlers["DeleteSecret"] = guarded
    # A script: refused with exit 10 and the way on, nothing forced.
    code, out, err = await run(*at(fake, "secrets", "delete", "x", "--yes"))
    assert code == cli.EXIT_IN_USE == 10 and out == ""
    assert "pass --force" in err and "FAILED_PRECONDITION: secret x is in use" in err
    assert [c.request.force for c in fake.calls] == [False]
    # A terminal: who uses it, then asked again; anything but "force" keeps it.
    fake.calls.clear()
    code, out, err = await run(*at(fake, "secrets", "delete", "x"), stdin=b"x\nno\n", tty=True)
    assert code == cli.EXIT_USAGE and "used by: payments, invoices" in err
    assert "last resolved at 2026-11-29T05:31:12.500000Z" in err
    assert [c.request.force for c in fake.calls] == [False]
    fake.calls.clear()
    code, out, err = await run(*at(fake, "secrets", "delete", "x"), stdin=b"x\nforce\n", tty=True)
    assert code == 0 and out == "deleted secret x (forced: it was in use)\n"
    assert [c.request.force for c in fake.calls] == [False, True]
    # --force: one call, forced.
    fake.calls.clear()
    code, out, _ = await run(*at(fake, "--json", "secrets", "delete", "x", "--yes", "--force"))
    assert code == 0 and json.loads(out)["forced"] is True
    assert [c.request.force for c in fake.calls] == [True]


async def test_config_delete_in_use_and_usage_commands(run: Run, fake: FakeVault) -> None:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not request.force:
            await abort(context, Code.FAILED_PRECONDITION, "config in use", "CONFIG_IN_USE", IN_USE)
        return empty_pb2.Empty()

    fake.handlers["DeleteConfigValue"] = guarded
    code, _, err = await run(*at(fake, "configs", "delete", "host", "--yes"))
    assert code == cli.EXIT_IN_USE and "pass --force" in err
    code, out, _ = await run(*at(fake, "configs", "delete", "host", "--yes", "--force"))
    assert code == 0 and "forced" in out

    used = secret(
        usage=usage_pb2.Usage(
            resolve_count=7,
            last_resolve_time=timestamp_pb2.Timestamp(seconds=1700000000),
            tools=[
                usage_pb2.ToolUsage(
                    tool="payments",
                    resolve_count=5,
                    last_resolve_time=timestamp_pb2.Timestamp(seconds=1700000000),
                )
            ],
        )
    )
    fake.reply("GetSecret", used)
    code, out, _ = await run(*at(fake, "secrets", "usage", "stripe_key"))
    assert code == 0
    assert out.splitlines()[0] == "secret stripe_key: 7 resolve(s), last at 2023-11-14T22:13:20Z"
    assert out.splitlines()[2].split() == ["payments", "2023-11-14T22:13:20Z", "5"]
    code, out, _ = await run(*at(fake, "--json", "secrets", "usage", "stripe_key"))
    assert json.loads(out)["tools"] == [
        {"tool": "payments", "last_resolve_time": "2023-11-14T22:13:20Z", "resolve_count": 5}
    ]
    fake.reply("GetSecret", secret())
    code, out, _ = await run(*at(fake, "secrets", "usage", "stripe_key"))
    assert out == "secret stripe_key was never resolved\n"
    fake.reply("GetConfigValue", config_pb.ConfigValue(key="host", value="h"))
    code, out, _ = await run(*at(fake, "configs", "usage", "host"))
    assert out == "config value host was never resolved\n"


async def test_list_passes_ordering_and_usage_filters(run: Run, fake: FakeVault) -> None:
    fake.reply("ListSecrets", secret_pb.ListSecretsResponse(total_size=0))
    code, _, _ = await run(
        *at(fake, "secrets", "list", "--order-by", "last_resolve_time", "--never-resolved")
    )
    request = fake.calls[-1].request
    assert code == 0 and request.order_by == "last_resolve_time" and request.never_resolved
    code, _, _ = await run(*at(fake, "secrets", "list", "--unused-since", "2026-11-01"))
    since = fake.calls[-1].request.unused_since.ToDatetime()
    assert code == 0 and since.isoformat() == "2026-11-01T00:00:00"
    code, _, _ = await run(*at(fake, "secrets", "list", "--unused-since", "30d"))
    assert code == 0 and fake.calls[-1].request.HasField("unused_since")
    code, _, err = await run(*at(fake, "secrets", "list", "--unused-since", "soon"))
    assert code == cli.EXIT_USAGE and "RFC 3339" in err
    code, _, _ = await run(*at(fake, "secrets", "list", "--order-by", "size"))
    assert code == cli.EXIT_USAGE
