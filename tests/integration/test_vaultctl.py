"""vaultctl end to end: the CLI as a subprocess against a live in-process vault.

The vault runs on this test's event loop, so vaultctl runs as an asyncio
subprocess and is never waited for synchronously.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(180)

VALUE = "sk_live_Zq9&x=1 /é"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Vaultctl:
    def __init__(self, vault: Any) -> None:
        self.vault = vault

    async def __call__(
        self,
        *args: str,
        role: str | None = "admin",
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> Result:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        environment["VAULT_ADDR"] = self.vault.address
        if role is not None:
            environment["VAULT_TOKEN"] = self.vault.tokens[role]
        environment.update(env or {})
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vaultsvc_client.cli",
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin), timeout=60)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())


@pytest.fixture
def vaultctl(vault: Any) -> Vaultctl:
    return Vaultctl(vault)


def assert_no_value(result: Result, value: str = VALUE) -> None:
    assert value not in result.out
    assert value not in result.err


async def create(vaultctl: Vaultctl, name: str, value: str, *extra: str) -> Result:
    result = await vaultctl("secrets", "create", name, *extra, stdin=value.encode())
    assert result.code == 0, result.err
    assert_no_value(result, value)
    return result


async def resolve_value(vaultctl: Vaultctl, tmp_path: Path, name: str) -> str:
    template = tmp_path / f"resolve-{name}.json"
    template.write_text(json.dumps({"v": f"{{{{secret:{name}}}}}"}))
    result = await vaultctl("--json", "resolve", str(template), role="resolver")
    assert result.code == 0, result.err
    fields = result.json()["fields"]
    assert fields[0]["key"] == "v"
    return str(fields[0]["value"])


async def test_create_from_stdin_then_get_shows_metadata_only(
    vaultctl: Vaultctl, tmp_path: Path
) -> None:
    created = await create(vaultctl, "stripe_key", VALUE, "--description", "Stripe live key")
    assert created.out.startswith("created secret stripe_key (etag ")

    shown = await vaultctl("secrets", "get", "stripe_key", "--json")
    assert shown.code == 0, shown.err
    assert_no_value(shown)
    document = shown.json()
    assert document["name"] == "stripe_key"
    assert document["description"] == "Stripe live key"
    assert document["etag"]
    assert document["create_time"].endswith("Z")
    assert set(document) == {
        "name",
        "description",
        "create_time",
        "update_time",
        "etag",
        "allowed_hosts",
        "current_version",
        "delete_time",
        "purge_time",
        "last_resolve_time",
        "resolve_count",
    }

    table = await vaultctl("secrets", "get", "stripe_key")
    assert table.code == 0 and "Stripe live key" in table.out
    assert_no_value(table)

    assert await resolve_value(vaultctl, tmp_path, "stripe_key") == VALUE


async def test_list_with_search_is_case_insensitive_and_sorted(vaultctl: Vaultctl) -> None:
    for name in ("orders_key", "Stripe_Live", "stripe_test", "github_token"):
        await create(vaultctl, name, f"value-of-{name}")

    found = await vaultctl("--json", "secrets", "list", "--contains", "STRIPE")
    assert found.code == 0, found.err
    document = found.json()
    assert [s["name"] for s in document["secrets"]] == ["Stripe_Live", "stripe_test"]
    assert document["total_size"] == 2

    everything = await vaultctl("secrets", "list", "--json", "--page-size", "1")
    names = [s["name"] for s in everything.json()["secrets"]]
    assert names == sorted(names, key=str.lower) and len(names) == 4

    table = await vaultctl("secrets", "list", "--contains", "key")
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "DESCRIPTION"]
    assert [line.split()[0] for line in lines[1:]] == ["orders_key"]
    assert "1 of 1" in table.err


async def test_update_keeps_the_value_unless_asked(vaultctl: Vaultctl, tmp_path: Path) -> None:
    await create(vaultctl, "orders_key", VALUE, "--description", "old")
    before = (await vaultctl("--json", "secrets", "get", "orders_key")).json()

    described = await vaultctl("--json", "secrets", "update", "orders_key", "--description", "new")
    assert described.code == 0, described.err
    after = described.json()
    assert after["description"] == "new"
    assert after["etag"] != before["etag"]
    assert await resolve_value(vaultctl, tmp_path, "orders_key") == VALUE

    stale = await vaultctl(
        "secrets", "update", "orders_key", "--clear-description", "--etag", before["etag"]
    )
    assert stale.code == 6, stale.err
    assert stale.err.startswith("vaultctl: ABORTED: ")

    cleared = await vaultctl(
        "--json", "secrets", "update", "orders_key", "--clear-description", "--etag", after["etag"]
    )
    assert cleared.code == 0, cleared.err
    assert cleared.json()["description"] == ""

    new_value = "rotated-" + VALUE
    rotated = await vaultctl(
        "secrets", "update", "orders_key", "--value-stdin", stdin=new_value.encode()
    )
    assert rotated.code == 0, rotated.err
    assert_no_value(rotated, new_value)
    assert await resolve_value(vaultctl, tmp_path, "orders_key") == new_value

    nothing = await vaultctl("secrets", "update", "orders_key", stdin=b"ignored")
    assert nothing.code == 2


async def test_delete_with_yes(vaultctl: Vaultctl) -> None:
    await create(vaultctl, "doomed", VALUE)
    deleted = await vaultctl("secrets", "delete", "doomed", "--yes")
    assert deleted.code == 0, deleted.err
    assert deleted.out == "deleted secret doomed\n"
    gone = await vaultctl("secrets", "get", "doomed")
    assert gone.code == 3
    assert gone.err.startswith("vaultctl: NOT_FOUND: ")


async def test_delete_without_terminal_or_yes_refuses_and_keeps_the_secret(
    vaultctl: Vaultctl,
) -> None:
    await create(vaultctl, "precious", VALUE)
    for stdin in (None, b"precious\n"):
        refused = await vaultctl("secrets", "delete", "precious", stdin=stdin)
        assert refused.code == 2
        assert "--yes" in refused.err
        assert refused.err.count("\n") == 1
    still_there = await vaultctl("secrets", "get", "precious")
    assert still_there.code == 0


async def test_exit_codes_for_not_found_and_access(vaultctl: Vaultctl) -> None:
    await create(vaultctl, "stripe_key", VALUE)

    missing = await vaultctl("secrets", "get", "no_such_secret")
    assert missing.code == 3
    assert missing.err.startswith("vaultctl: NOT_FOUND: ") and missing.err.count("\n") == 1
    assert (await vaultctl("secrets", "delete", "no_such_secret", "--yes")).code == 3

    duplicate = await vaultctl("secrets", "create", "STRIPE_KEY", stdin=b"another-value")
    assert duplicate.code == 4
    assert duplicate.err.startswith("vaultctl: ALREADY_EXISTS: ")

    bad_name = await vaultctl("secrets", "create", "9-starts-with-digit", stdin=b"x" * 8)
    assert bad_name.code == 7
    assert bad_name.err.startswith("vaultctl: INVALID_ARGUMENT: ")

    viewer_write = await vaultctl("secrets", "create", "viewer_try", role="viewer", stdin=b"v" * 8)
    assert viewer_write.code == 5
    assert viewer_write.err.startswith("vaultctl: PERMISSION_DENIED: ")
    assert (await vaultctl("secrets", "list", role="viewer")).code == 0
    assert (await vaultctl("secrets", "list", role="resolver")).code == 5

    no_token = await vaultctl("secrets", "list", role=None)
    assert no_token.code == 5
    assert no_token.err.startswith("vaultctl: UNAUTHENTICATED: ")
    wrong_token = await vaultctl("secrets", "list", env={"VAULT_TOKEN": "not-a-real-token"})
    assert wrong_token.code == 5

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    unavailable = await vaultctl("--timeout", "3", "secrets", "stats", env={"VAULT_ADDR": dead})
    assert unavailable.code == 8
    assert unavailable.err.startswith("vaultctl: UNAVAILABLE: ")


async def test_token_file(vaultctl: Vaultctl, vault: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "viewer.token"
    token_file.write_text(vault.tokens["viewer"] + "\n")
    result = await vaultctl("secrets", "stats", "--token-file", str(token_file), role=None)
    assert result.code == 0, result.err
    write = await vaultctl(
        "secrets", "create", "x_key", "--token-file", str(token_file), role=None, stdin=b"val123"
    )
    assert write.code == 5


async def test_resolve_with_the_resolver_token(vaultctl: Vaultctl, tmp_path: Path) -> None:
    await create(vaultctl, "stripe_key", VALUE)
    put = await vaultctl("configs", "put", "api_host", "api.example.com")
    assert put.code == 0, put.err
    template = tmp_path / "charge.json"
    template.write_text(
        json.dumps(
            {
                "tool": "charge-tool",
                "fields": [
                    {
                        "key": "url",
                        "template": "https://{{config:api_host}}/v1/charges/{{input.order}}",
                        "encoding": "URL",
                    },
                    {
                        "key": "header:Authorization",
                        "template": "Bearer {{ secret:stripe_key }}",
                        "encoding": "HEADER",
                    },
                    {
                        "key": "body",
                        "template": '{"key": "{{secret:stripe_key}}"}',
                        "encoding": "JSON",
                    },
                ],
            }
        )
    )
    resolved = await vaultctl(
        "--json", "resolve", str(template), "--input", "order=a/b?c", role="resolver"
    )
    assert resolved.code == 0, resolved.err
    fields = {f["key"]: f["value"] for f in resolved.json()["fields"]}
    assert fields["url"] == "https://api.example.com/v1/charges/a%2Fb%3Fc"
    assert fields["header:Authorization"] == f"Bearer {VALUE}"
    assert json.loads(fields["body"]) == {"key": VALUE}
    assert VALUE not in resolved.err

    plain = await vaultctl("resolve", str(template), "--input", "order=1", role="resolver")
    assert plain.code == 0
    assert f"header:Authorization: Bearer {VALUE}\n" in plain.out

    as_admin = await vaultctl("resolve", str(template), "--input", "order=1")
    assert as_admin.code == 5
    assert_no_value(as_admin)

    missing_input = await vaultctl("resolve", str(template), role="resolver")
    assert missing_input.code == 7
    assert "order" in missing_input.err

    typo = tmp_path / "typo.json"
    typo.write_text('{"h": "{{secret:stripe_kye}} {{secret:nope_key}}"}')
    missing = await vaultctl("resolve", str(typo), role="resolver")
    assert missing.code == 3
    assert "stripe_kye" in missing.err and "nope_key" in missing.err
    assert missing.out == ""

    # The audit trail is written by a background flusher: poll briefly.
    def recorded(events: list[dict[str, Any]]) -> bool:
        return any(
            e["method"].endswith("/ResolveTemplate") and e["tool"] == "charge-tool" for e in events
        ) and any(e["method"].endswith("/CreateSecret") for e in events)

    for _ in range(50):
        audit = await vaultctl("--json", "audit", "--secret", "stripe_key")
        assert audit.code == 0, audit.err
        assert_no_value(audit)
        if recorded(audit.json()["events"]):
            break
        await asyncio.sleep(0.1)
    assert recorded(audit.json()["events"]), audit.out
    table = await vaultctl("audit", "--secret", "stripe_key", "--limit", "1")
    assert table.code == 0
    assert len(table.out.splitlines()) == 2  # header + the newest event


async def test_check_finds_a_typo(vaultctl: Vaultctl, tmp_path: Path) -> None:
    await create(vaultctl, "orders_key", VALUE)
    template = tmp_path / "orders-tool.json"
    template.write_text(
        json.dumps(
            {
                "fields": [
                    {
                        "key": "header:Authorization",
                        "template": "Bearer {{secret:orderskey}}",
                        "encoding": "HEADER",
                    },
                    {"key": "url", "template": "https://x/{{input.id}}", "encoding": "URL"},
                ]
            }
        )
    )
    checked = await vaultctl("check", str(template), role="viewer")
    assert checked.code == 9, checked.err
    assert "orderskey" in checked.out
    assert "SECRET_NOT_FOUND" in checked.out
    assert_no_value(checked)

    # each field once, its problems under it, without the field key repeated
    lines = checked.out.splitlines()
    assert lines[0] == "header:Authorization  HEADER  secrets: orderskey"
    assert lines[1].startswith("  SECRET_NOT_FOUND at ")
    assert "header:Authorization" not in lines[1]
    assert lines[2] == "url  URL  inputs: id"

    as_json = await vaultctl("--json", "check", str(template))
    assert as_json.code == 9
    document = as_json.json()
    assert document["ok"] is False
    header, url = document["fields"]
    assert (header["key"], header["secret_names"]) == ("header:Authorization", ["orderskey"])
    [problem] = header["problems"]
    assert (problem["kind"], problem["name"]) == ("SECRET_NOT_FOUND", "orderskey")
    assert "header:Authorization" not in problem["message"]
    assert (url["input_names"], url["problems"]) == (["id"], [])

    fixed = tmp_path / "fixed.json"
    fixed.write_text('{"h": "Bearer {{secret:orders_key}}"}')
    clean = await vaultctl("check", str(fixed), role="resolver")
    assert clean.code == 0, clean.out + clean.err
    assert "no problems" in clean.out

    malformed = await vaultctl("--json", "check", "-", stdin=b'{"h": "{{secret:orders key}}"}')
    assert malformed.code == 9
    assert malformed.json()["fields"][0]["problems"][0]["kind"] == "MALFORMED_PLACEHOLDER"


async def test_configs_and_stats(vaultctl: Vaultctl) -> None:
    empty = await vaultctl("--json", "secrets", "stats")
    assert empty.code == 0, empty.err
    assert empty.json()["total_secrets"] == 0

    assert (
        await vaultctl("configs", "put", "base_url", "https://a", "--description", "d")
    ).code == 0
    assert (await vaultctl("configs", "put", "base_url", stdin=b"https://b")).code == 0
    got = await vaultctl("--json", "configs", "get", "base_url", role="viewer")
    assert got.code == 0, got.err
    assert (got.json()["value"], got.json()["description"]) == ("https://b", "")
    listed = await vaultctl("--json", "configs", "list", "--contains", "URL")
    assert [c["key"] for c in listed.json()["config_values"]] == ["base_url"]
    assert (await vaultctl("configs", "delete", "base_url")).code == 2
    assert (await vaultctl("configs", "delete", "base_url", "--yes")).code == 0
    assert (await vaultctl("configs", "get", "base_url")).code == 3

    await create(vaultctl, "one_key", VALUE)
    stats = await vaultctl("--json", "secrets", "stats", role="viewer")
    assert stats.json()["total_secrets"] == 1
    assert stats.json()["last_update_time"].endswith("Z")


async def test_listing_walks_pages_with_the_pager(vaultctl: Vaultctl) -> None:
    names = [f"page_key_{i}" for i in range(7)]
    for name in names:
        await create(vaultctl, name, VALUE)
    listed = await vaultctl("--json", "secrets", "list", "--page-size", "2")
    assert listed.code == 0, listed.err
    assert [s["name"] for s in listed.json()["secrets"]] == names
    assert listed.json()["total_size"] == 7
    limited = await vaultctl("secrets", "list", "--page-size", "2", "--limit", "3")
    assert [line.split()[0] for line in limited.out.splitlines()[1:]] == names[:3]
    assert limited.err.strip() == "3 of 7 secret(s)"

    for key in ("c_host", "a_host", "b_host"):
        assert (await vaultctl("configs", "put", key, "v")).code == 0
    configs = await vaultctl("--json", "configs", "list", "--page-size", "1", "--contains", "host")
    assert [c["key"] for c in configs.json()["config_values"]] == ["a_host", "b_host", "c_host"]
    assert configs.json()["total_size"] == 3

    for _ in range(100):  # audit events are flushed in the background
        audit = await vaultctl("--json", "audit", "--page-size", "2", "--limit", "5")
        if len(audit.json()["events"]) == 5:
            break
        await asyncio.sleep(0.05)
    assert len(audit.json()["events"]) == 5


async def test_already_exists_names_the_existing_spelling(vaultctl: Vaultctl) -> None:
    await create(vaultctl, "Stripe_Key", VALUE)
    again = await vaultctl("secrets", "create", "stripe_KEY", stdin=b"other")
    assert again.code == 4
    assert "the existing secret is spelled 'Stripe_Key'" in again.err
    as_json = await vaultctl("--json", "secrets", "create", "STRIPE_KEY", stdin=b"other")
    error = json.loads(as_json.err)
    assert (error["code"], error["reason"], error["existing_name"]) == (
        "ALREADY_EXISTS",
        "ALREADY_EXISTS",
        "Stripe_Key",
    )
    assert error["request_id"]
    assert "other" not in as_json.err and as_json.out == ""


async def test_json_error_carries_the_request_id(vaultctl: Vaultctl) -> None:
    missing = await vaultctl("secrets", "get", "nope", "--json", role="viewer")
    assert missing.code == 3 and missing.out == ""
    error = json.loads(missing.err)
    assert set(error) == {"code", "reason", "message", "request_id"}
    assert (error["code"], error["reason"]) == ("NOT_FOUND", "SECRET_NOT_FOUND")
    assert error["request_id"]


async def test_bearer_prefix_in_vault_token_gets_a_hint(vaultctl: Vaultctl, vault: Any) -> None:
    token = vault.tokens["viewer"]
    result = await vaultctl("secrets", "stats", role=None, env={"VAULT_TOKEN": f"Bearer {token}"})
    assert result.code == 2
    assert "VAULT_TOKEN" in result.err and "give the token alone" in result.err
    assert token not in result.err


async def test_sigint_exits_130(tmp_path: Path) -> None:
    """Ctrl-C during a call: exit 130 and one line, no traceback."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vaultsvc_client",
        "--addr",
        address,
        "--timeout",
        "60",
        "secrets",
        "stats",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    try:
        # vaultctl is inside its call once it has connected (a server that never answers)
        listener.settimeout(60)
        connection, _ = await asyncio.to_thread(listener.accept)
        with connection:
            process.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        listener.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130, err
    assert err.decode() == "vaultctl: interrupted: cancelled by user\n"
    assert out == b""
