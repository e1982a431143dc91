"""``vaultctl load`` end to end: the tool as a subprocess against a live vault.

Most tests use the in-process vault of this test's event loop (so the tool runs
as an asyncio subprocess, never waited for synchronously). The outage test runs
``python -m vaultsvc serve`` as a process of its own, on the session's Postgres,
and kills it in the middle of a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as spbg

from tests.support.cli import start_serve
from tests.support.vault import VaultHandle, create_database
from vaultsvc.auth import hash_token, new_token
from vaultsvc.crypto import generate_master_key
from vaultsvc.storage.embedded import EmbeddedPostgres

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
EXIT_CALLS_FAILED = 10
EXIT_SETUP_FAILED = 11
EXIT_INTERRUPTED = 130

REPORT_KEYS = {
    "target",
    "scenario",
    "options",
    "latency_from",
    "interrupted",
    "count",
    "ok",
    "errors",
    "planned",
    "missed",
    "duration_s",
    "rps",
    "latency_ms",
    "errors_by_code",
    "errors_by_reason",
    "processes",
    "seeded",
}
LATENCY_KEYS = {"count", "min", "mean", "p50", "p90", "p99", "p99_9", "max"}


@dataclass
class Result:
    code: int
    out: str
    err: str

    def report(self) -> dict[str, Any]:
        assert "Traceback" not in self.err, self.err
        document: dict[str, Any] = json.loads(self.out)
        return document


def load_env(address: str, token: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env["VAULT_ADDR"] = address
    if token is not None:
        env["VAULT_TOKEN"] = token
    env.update(extra)
    return env


async def start_load(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vaultsvc_client.load",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def finish(process: asyncio.subprocess.Process, timeout: float = 150) -> Result:
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def run_load(env: dict[str, str], *args: str) -> Result:
    return await finish(await start_load(env, *args))


async def wait_for_progress(process: asyncio.subprocess.Process, seen: list[str]) -> None:
    """Reads --progress lines from stderr until one shows successful calls."""
    assert process.stderr is not None
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), timeout=60)).decode()
        assert line, "load ended early: " + "".join(seen)
        seen.append(line)
        match = re.search(r"\bok (\d+)\b", line)
        if match and int(match.group(1)) > 0:
            return


async def create_secrets(admin: spbg.SecretServiceStub, token: str, *names: str) -> None:
    metadata = [("authorization", f"Bearer {token}")]
    for name in names:
        await admin.CreateSecret(
            spb.CreateSecretRequest(name=name, value=f"value-of-{name}-Zq9&x=1 /é"),
            metadata=metadata,
            timeout=10,
        )


async def listed(admin: spbg.SecretServiceStub, token: str, contains: str) -> list[str]:
    reply = await admin.ListSecrets(
        spb.ListSecretsRequest(name_contains=contains, page_size=1000),
        metadata=[("authorization", f"Bearer {token}")],
        timeout=10,
    )
    return [s.name for s in reply.secrets]


@pytest.fixture
async def three_secrets(vault: VaultHandle) -> list[str]:
    names = ["orders_api_key", "stripe_key", "github_token"]
    await create_secrets(spbg.SecretServiceStub(vault.channel(None)), vault.tokens["admin"], *names)
    return names


def secret_args(names: list[str]) -> list[str]:
    return [arg for name in names for arg in ("--secret", name)]


# -- counts and shape ------------------------------------------------------------------


async def test_total_gives_exactly_that_many_calls_and_the_json_shape(
    vault: VaultHandle, three_secrets: list[str]
) -> None:
    env = load_env(vault.address, vault.tokens["resolver"])
    result = await run_load(
        env,
        "--total",
        "60",
        "--concurrency",
        "6",
        "--connections",
        "3",
        "--format",
        "json",
        *secret_args(three_secrets),
    )
    assert result.code == 0, result.err
    report = result.report()
    assert set(report) == REPORT_KEYS
    assert set(report["latency_ms"]) == LATENCY_KEYS
    assert report["count"] == report["ok"] == 60 and report["errors"] == 0
    assert report["latency_ms"]["count"] == 60
    lat = report["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    assert report["errors_by_code"] == {} and report["errors_by_reason"] == []
    assert report["options"] == {
        "concurrency": 6,
        "connections": 3,
        "procs": 1,
        "duration_s": None,
        "total": 60,
        "rps": None,
        "timeout_s": 10.0,
    }
    assert report["scenario"] == {
        "name": "seed",
        "fields": 3,
        "secrets_per_request": 3,
        "names": "same",
        "pool": 3,
        "tool": "vaultctl-load",
    }
    assert report["latency_from"] == "call_start"
    assert report["interrupted"] is False and report["seeded"] is None
    assert report["planned"] is None and report["missed"] == 0
    assert report["target"] == vault.address
    assert report["duration_s"] > 0 and report["rps"] > 0
    assert [p["count"] for p in report["processes"]] == [60]


async def test_failed_calls_are_counted_by_code_and_reason(
    vault: VaultHandle, three_secrets: list[str]
) -> None:
    env = load_env(vault.address, vault.tokens["resolver"])
    # Three slots drawn from four names, one of them missing: most calls fail with
    # NOT_FOUND / SECRET_NOT_FOUND, about a quarter succeed.
    result = await run_load(
        env,
        "--total",
        "150",
        "--concurrency",
        "5",
        "--names",
        "random",
        "--format",
        "json",
        *secret_args([*three_secrets, "no_such_secret"]),
    )
    assert result.code == EXIT_CALLS_FAILED, result.err
    report = result.report()
    assert report["count"] == 150
    assert report["ok"] + report["errors"] == 150
    assert report["ok"] > 0 and report["errors"] > 0
    assert report["errors_by_code"] == {"NOT_FOUND": report["errors"]}
    assert report["errors_by_reason"] == [
        {"code": "NOT_FOUND", "reason": "SECRET_NOT_FOUND", "count": report["errors"]}
    ]
    assert report["latency_ms"]["count"] == report["ok"]

    text = await run_load(env, "--total", "20", *secret_args(["no_such_secret"]))
    assert text.code == EXIT_CALLS_FAILED
    assert re.search(r"NOT_FOUND\s+SECRET_NOT_FOUND\s+20\b", text.out), text.out
    assert "Count:        20  (ok 0, errors 20)" in text.out
    assert "Traceback" not in text.err


async def test_wrong_token_is_counted_not_raised(
    vault: VaultHandle, three_secrets: list[str]
) -> None:
    env = load_env(vault.address, vault.tokens["admin"])  # an admin can not resolve
    result = await run_load(env, "--total", "10", "--format", "json", *secret_args(three_secrets))
    assert result.code == EXIT_CALLS_FAILED
    assert result.report()["errors_by_code"] == {"PERMISSION_DENIED": 10}


# -- open loop, processes ----------------------------------------------------------------


async def test_rps_run_follows_the_schedule(vault: VaultHandle, three_secrets: list[str]) -> None:
    env = load_env(vault.address, vault.tokens["resolver"])
    result = await run_load(
        env,
        "--rps",
        "40",
        "--duration",
        "1.5s",
        "--concurrency",
        "4",
        "--format",
        "json",
        *secret_args(three_secrets),
    )
    assert result.code == 0, result.err
    report = result.report()
    # 40/s for 1.5 s is 60 intended starts: never more calls than that, and every
    # slot is either made or reported missed.
    assert report["planned"] == 60
    assert report["count"] <= 60
    assert report["count"] + report["missed"] == 60
    assert report["count"] > 0
    assert report["latency_from"] == "intended_start"
    # The last slot is intended 1.475 s after the start: the run cannot be shorter.
    assert report["duration_s"] >= 1.47


async def test_procs_merge_their_histograms(vault: VaultHandle, three_secrets: list[str]) -> None:
    env = load_env(vault.address, vault.tokens["resolver"])
    result = await run_load(
        env,
        "--procs",
        "2",
        "--concurrency",
        "4",
        "--connections",
        "2",
        "--total",
        "61",
        "--format",
        "json",
        *secret_args(three_secrets),
    )
    assert result.code == 0, result.err
    report = result.report()
    processes = report["processes"]
    assert len(processes) == 2
    assert sorted(p["count"] for p in processes) == [30, 31]
    assert report["count"] == sum(p["count"] for p in processes) == 61
    assert report["ok"] == sum(p["ok"] for p in processes) == 61
    # The merged HDR histogram holds every process's calls.
    assert report["latency_ms"]["count"] == 61
    assert report["options"]["connections"] == 2


# -- seeding ---------------------------------------------------------------------------


async def test_seeded_secrets_are_created_used_and_removed(vault: VaultHandle) -> None:
    admin = spbg.SecretServiceStub(vault.channel(None))
    await create_secrets(admin, vault.tokens["admin"], "bystander_load_key")
    env = load_env(vault.address, vault.tokens["resolver"], VAULT_ADMIN_TOKEN=vault.tokens["admin"])
    result = await run_load(
        env,
        "--seed-secrets",
        "12",
        "--value-size",
        "48",
        "--names",
        "random",
        "--total",
        "80",
        "--format",
        "json",
    )
    assert result.code == 0, result.err
    report = result.report()
    assert report["ok"] == 80 and report["errors"] == 0
    seeded = report["seeded"]
    prefix = seeded["prefix"]
    assert re.fullmatch(r"load_[0-9a-f]{12}_", prefix)
    assert seeded == {"prefix": prefix, "count": 12, "value_size": 48, "removed": 12, "left": 0}
    assert report["scenario"]["pool"] == 12
    assert await listed(admin, vault.tokens["admin"], prefix) == []
    assert await listed(admin, vault.tokens["admin"], "load_") == ["bystander_load_key"]
    # The seeded secrets were really resolved: the audit names them.
    await vault.runtime.audit.flush()
    rows = await vault.sql(
        "SELECT count(*) AS n FROM audit_events"
        " WHERE EXISTS (SELECT 1 FROM unnest(secret_names) AS n WHERE starts_with(n, $1))",
        prefix,
    )
    assert rows[0]["n"] >= 80


async def test_ctrl_c_stops_the_run_and_still_removes_seeded_secrets(vault: VaultHandle) -> None:
    admin = spbg.SecretServiceStub(vault.channel(None))
    env = load_env(vault.address, vault.tokens["resolver"], VAULT_ADMIN_TOKEN=vault.tokens["admin"])
    process = await start_load(
        env, "--seed-secrets", "5", "--duration", "120s", "--progress", "--format", "json"
    )
    seen: list[str] = []
    await wait_for_progress(process, seen)
    process.send_signal(signal.SIGINT)
    result = await finish(process, timeout=60)
    assert result.code == EXIT_INTERRUPTED, "".join(seen) + result.err
    report = result.report()
    assert report["interrupted"] is True
    assert report["count"] > 0
    seeded = report["seeded"]
    assert seeded["count"] == 5 and seeded["removed"] == 5 and seeded["left"] == 0
    assert await listed(admin, vault.tokens["admin"], seeded["prefix"]) == []


async def test_seeding_with_a_bad_admin_token_fails_setup_cleanly(vault: VaultHandle) -> None:
    env = load_env(vault.address, vault.tokens["resolver"], VAULT_ADMIN_TOKEN=new_token())
    result = await run_load(env, "--seed-secrets", "3", "--total", "5")
    assert result.code == EXIT_SETUP_FAILED
    assert "Traceback" not in result.err
    assert "seeding failed" in result.err and "UNAUTHENTICATED" in result.err
    assert result.out == ""
    rows = await vault.sql("SELECT count(*) AS n FROM secrets")
    assert rows[0]["n"] == 0


async def test_no_vault_listening_is_a_setup_failure() -> None:
    # A port held by a socket that never listens: connecting to it is refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        env = load_env(f"127.0.0.1:{port}", new_token())
        result = await run_load(env, "--total", "5", "--timeout", "1", "--secret", "a")
    assert result.code == EXIT_SETUP_FAILED
    assert f"cannot connect to 127.0.0.1:{port}" in result.err
    assert "Traceback" not in result.err


# -- the vault stopped mid-run ---------------------------------------------------------------


@dataclass
class ServeProcess:
    proc: asyncio.subprocess.Process
    address: str
    tokens: dict[str, str]
    stderr_path: Path


@pytest.fixture
async def serve(pg: EmbeddedPostgres) -> AsyncIterator[ServeProcess]:
    """``python -m vaultsvc serve`` on a fresh database of the session's Postgres
    (so killing the server leaves no Postgres of its own behind)."""
    base = Path(tempfile.mkdtemp(prefix="vaultsvc-load-"))
    key_id, key = generate_master_key()
    tokens = {"admin": new_token(), "resolver": new_token()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(
        {
            "VAULT_DATABASE_URL": await create_database(pg),
            "VAULT_DATA_DIR": str(base / "data"),
            "VAULT_LISTEN": "127.0.0.1:0",
            "VAULT_MASTER_KEYS": f"{key_id}:{key}",
            "VAULT_TOKENS": ",".join(
                f"load-{role}:{role}:{hash_token(token).hex()}" for role, token in tokens.items()
            ),
        }
    )
    started = await start_serve(env, base / "serve.log", timeout=60)
    handle = ServeProcess(started.proc, started.address, tokens, started.stderr_path)
    try:
        yield handle
    finally:
        if handle.proc.returncode is None:
            handle.proc.kill()
            await handle.proc.wait()


async def test_vault_stopped_mid_run_counts_unavailable_and_exits_non_zero(
    serve: ServeProcess,
) -> None:
    names = ["orders_api_key", "stripe_key", "github_token"]
    async with grpc.aio.insecure_channel(serve.address) as channel:
        await create_secrets(spbg.SecretServiceStub(channel), serve.tokens["admin"], *names)
    env = load_env(serve.address, serve.tokens["resolver"])
    process = await start_load(
        env,
        "--rps",
        "50",
        "--duration",
        "10s",
        "--concurrency",
        "4",
        "--timeout",
        "2",
        "--progress",
        "--format",
        "json",
        *secret_args(names),
    )
    seen: list[str] = []
    await wait_for_progress(process, seen)
    serve.proc.kill()
    await serve.proc.wait()
    result = await finish(process, timeout=90)

    assert result.code == EXIT_CALLS_FAILED, "".join(seen) + result.err
    report = result.report()  # also: no traceback on stderr
    assert report["ok"] > 0
    assert report["errors_by_code"].get("UNAVAILABLE", 0) > 0
    assert set(report["errors_by_code"]) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    assert report["ok"] + report["errors"] == report["count"]
    assert report["count"] + report["missed"] == report["planned"] == 500
    unavailable = [e for e in report["errors_by_reason"] if e["code"] == "UNAVAILABLE"]
    assert sum(e["count"] for e in unavailable) == report["errors_by_code"]["UNAVAILABLE"]
