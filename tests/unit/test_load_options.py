"""``vaultctl load`` options: validation errors, defaults, scenarios and request building."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from interakt.vault.v1 import resolver_service_pb2 as rpb
from vaultsvc_client.load import EXIT_CODES, build_parser, main
from vaultsvc_client.load.options import (
    DEFAULT_DURATION,
    EXIT_USAGE,
    LoadOptions,
    LoadUsageError,
    options_from_args,
    parse_duration,
)
from vaultsvc_client.load.scenario import (
    SEED_SCENARIO,
    RequestFactory,
    Scenario,
    load_template_file,
)

ADMIN = "vt_admin_token_for_tests"


def options(*argv: str, env: dict[str, str] | None = None) -> LoadOptions:
    return options_from_args(build_parser().parse_args(list(argv)), environ=env or {})


def usage_error(*argv: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(LoadUsageError) as info:
        options(*argv, env=env)
    return str(info.value)


def test_defaults_and_environment() -> None:
    chosen = options(env={"VAULT_ADDR": "127.0.0.1:6000", "VAULT_TOKEN": "vt_r"})
    assert chosen.address == "127.0.0.1:6000"
    assert chosen.token == "vt_r"
    assert chosen.duration == DEFAULT_DURATION and chosen.total is None
    assert (chosen.concurrency, chosen.connections, chosen.procs) == (16, 1, 1)
    assert chosen.rps is None and chosen.timeout == 10.0
    assert chosen.names == "same" and chosen.output == "text"
    assert chosen.tls is None and chosen.insecure is None

    flags = options("--addr", "h:1", "--token", "vt_flag", env={"VAULT_TOKEN": "vt_env"})
    assert (flags.address, flags.token) == ("h:1", "vt_flag")

    seeded = options("--seed-secrets", "5", env={"VAULT_ADMIN_TOKEN": ADMIN})
    assert seeded.admin_token == ADMIN and seeded.value_size == 32


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10", 10.0), ("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), (".5s", 0.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ten", "10x", "-1s", "0", "0ms", "1e3"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(LoadUsageError):
        parse_duration(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["--duration", "10s", "--total", "5"],
        ["--duration", "soon"],
        ["--concurrency", "0"],
        ["--connections", "0"],
        ["--total", "0"],
        ["--total", "many"],
        ["--rps", "0"],
        ["--rps", "-5"],
        ["--rps", "nan"],
        ["--procs", "0"],
        ["--names", "sometimes"],
        ["--format", "xml"],
        ["--seed-secrets", "-1"],
    ],
)
def test_argument_errors_exit_2_with_one_usage_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "error:" in err


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--connections", "4", "--concurrency", "2"], {}, "cannot exceed --concurrency"),
        (["--procs", "4", "--concurrency", "2"], {}, "each process needs at least one worker"),
        (["--procs", "3", "--concurrency", "3", "--total", "2"], {}, "at least --procs"),
        (["--procs", "1000", "--concurrency", "2000"], {}, "--procs is at most"),
        (["--seed-secrets", "5"], {}, "needs an admin token"),
        (["--seed-secrets", "5", "--secret", "a"], {"VAULT_ADMIN_TOKEN": ADMIN}, "not both"),
        (["--value-size", "64"], {}, "--value-size needs --seed-secrets"),
        (
            ["--seed-secrets", "2", "--value-size", "70000"],
            {"VAULT_ADMIN_TOKEN": ADMIN},
            "at most 65536",
        ),
        (["--timeout", "0"], {}, "--timeout must be"),
        (["--timeout", "-1"], {}, "--timeout must be"),
        (["--tls", "--insecure"], {}, "either --tls or --insecure"),
        (["--insecure", "--server-name", "vault"], {}, "--insecure cannot be combined"),
        (["--ca-file", "/nonexistent/ca.pem"], {}, "cannot read TLS file"),
        (["--token", "vt_a", "--token-file", "f"], {}, "either --token or --token-file"),
        (["--token-file", "/nonexistent/token"], {}, "cannot read token file"),
        (["--token", "two words"], {}, "must not contain whitespace"),
        (["--secret", "{{x}}"], {}, "--secret takes a secret name"),
        (["--template-file", "/nonexistent/t.json"], {}, "no such file"),
    ],
)
def test_validation_errors(argv: list[str], env: dict[str, str], expected: str) -> None:
    assert expected in usage_error(*argv, env=env)


def test_usage_errors_are_one_line_and_never_echo_the_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("VAULT_ADMIN_TOKEN", "VAULT_TOKEN", "VAULT_ADDR"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--seed-secrets", "3"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("vaultctl load: usage: --seed-secrets needs an admin token")
    assert err.count("\n") == 1

    assert main(["--token", "vt_secret token"]) == EXIT_USAGE
    assert "vt_secret" not in capsys.readouterr().err


def test_builtin_scenario_needs_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAULT_ADMIN_TOKEN", raising=False)
    assert main(["--total", "1"]) == EXIT_USAGE
    assert "give --seed-secrets N" in capsys.readouterr().err


def test_template_file_without_slots_refuses_seeding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plain.json"
    path.write_text(json.dumps({"auth": "Bearer {{secret:orders_key}}"}))
    code = main(["--template-file", str(path), "--seed-secrets", "3", "--admin-token", ADMIN])
    assert code == EXIT_USAGE
    assert "seeded secrets would go unused" in capsys.readouterr().err


def test_exit_codes_are_documented_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in EXIT_CODES:
        assert f"  {code:<3}  " in out
    for flag in ("--rps", "--procs", "--seed-secrets", "--names", "--template-file", "--format"):
        assert flag in out


# -- scenarios -------------------------------------------------------------------------


def test_seed_scenario_same_names_builds_one_request() -> None:
    factory = RequestFactory(SEED_SCENARIO, ["a", "b", "c", "d"], "same", "load")
    first = factory.next()
    assert factory.next() is first
    assert [f.key for f in first.fields] == ["url", "header:Authorization", "body"]
    assert [f.encoding for f in first.fields] == [
        rpb.ENCODING_URL,
        rpb.ENCODING_HEADER,
        rpb.ENCODING_JSON,
    ]
    assert "{{secret:a}}" in first.fields[0].template
    assert first.fields[1].template == "Bearer {{secret:b}}"
    assert '"{{secret:c}}"' in first.fields[2].template
    assert dict(first.inputs) == {"order_id": "42"}
    assert first.tool == "load"


def test_same_names_cycle_a_short_pool() -> None:
    request = RequestFactory(SEED_SCENARIO, ["only"], "same", "t").next()
    assert all("{{secret:only}}" in f.template for f in request.fields)


def test_random_names_draw_distinct_secrets_from_the_pool() -> None:
    pool = [f"s{i}" for i in range(50)]
    factory = RequestFactory(SEED_SCENARIO, pool, "random", "t", random.Random(7))
    seen: set[str] = set()
    for _ in range(200):
        request = factory.next()
        names = [f.template.split("{{secret:")[1].split("}}")[0] for f in request.fields]
        assert len(set(names)) == 3 and set(names) <= set(pool)
        seen.update(names)
    assert len(seen) > 40


def test_template_file_with_slots_and_inputs(tmp_path: Path) -> None:
    path = tmp_path / "tool.json"
    path.write_text(
        json.dumps(
            {
                "tool": "orders",
                "fields": [
                    {"key": "u", "template": "https://x.test/{{ secret:$2 }}", "encoding": "URL"},
                    {"key": "h", "template": "k={{secret:$1}} {{input.id}} $1", "encoding": "RAW"},
                ],
                "inputs": {"id": "7"},
            }
        )
    )
    scenario = load_template_file(str(path))
    assert scenario.slots == 2 and scenario.tool == "orders"
    request = RequestFactory(scenario, ["p", "q"], "same", "ignored").next()
    assert [f.template for f in request.fields] == [
        "https://x.test/{{secret:q}}",
        "k={{secret:p}} {{input.id}} $1",
    ]
    assert request.tool == "orders" and dict(request.inputs) == {"id": "7"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[1, 2]", "expected a JSON object"),
        ("{", "not valid JSON"),
        ('{"fields": [], "extra": 1}', "unknown top-level key"),
        ('{"fields": "x"}', "fields must be a list"),
        ('{"fields": [{"key": "a"}]}', "needs 'key' and 'template'"),
        ('{"fields": [{"key": "a", "template": "t", "encoding": "ZIP"}]}', "unknown encoding"),
        ('{"fields": [{"key": "a", "template": "t"}], "inputs": {"a": 1}}', "inputs must be"),
        ('{"fields": []}', "no fields"),
        ("{}", "expected"),
    ],
)
def test_template_file_errors(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(LoadUsageError) as info:
        load_template_file(str(path))
    assert expected in str(info.value)


def test_slots_without_a_pool_are_a_usage_error() -> None:
    scenario = Scenario(name="s", fields=(("k", "{{secret:$1}}", rpb.ENCODING_RAW),))
    with pytest.raises(LoadUsageError):
        RequestFactory(scenario, [], "same", "t")
