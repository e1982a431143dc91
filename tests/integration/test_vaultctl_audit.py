"""``vaultctl audit`` with filters, and ``--since --follow`` as a subprocess: it prints what
happened since, then every new event once (late ones and same-timestamp ones included),
until SIGINT, and exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as sgrpc

from tests.support.cli import REPO_ROOT
from tests.support.vault import VaultHandle

pytestmark = pytest.mark.timeout(180)


def env_for(vault: VaultHandle) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(VAULT_ADDR=vault.address, VAULT_TOKEN=vault.tokens["admin"], PYTHONUNBUFFERED="1")
    return env


async def vaultctl(vault: VaultHandle, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vaultsvc_client.cli",
        *args,
        cwd=REPO_ROOT,
        env=env_for(vault),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def insert_event(vault: VaultHandle, request_id: str, at: datetime, method: str) -> None:
    await vault.sql(
        "INSERT INTO audit_events (time, principal, method, outcome, request_id) "
        "VALUES ($1, 'test-admin', $2, 'OK', $3)",
        at,
        method,
        request_id,
    )


async def test_filters_and_bad_times(vault: VaultHandle) -> None:
    secrets = sgrpc.SecretServiceStub(vault.channel("admin"))
    await secrets.CreateSecret(spb.CreateSecretRequest(name="ctl_a", value="v-1"), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError):  # it does not exist: NOT_FOUND
        await secrets.GetSecret(spb.GetSecretRequest(name="ctl_missing"), timeout=10)
    await insert_event(vault, "ctl-old", datetime.now(UTC) - timedelta(hours=3), "/x.S/GetSecret")

    code, out, err = await vaultctl(
        vault, "audit", "--since", "1h", "--method", "GetSecret", "--json"
    )
    assert code == 0, err
    events = json.loads(out)["events"]
    assert [(e["method"], e["outcome"]) for e in events] == [
        ("/interakt.vault.v1.SecretService/GetSecret", "NOT_FOUND")
    ]
    code, out, err = await vaultctl(
        vault, "audit", "--since", "4h", "--until", "2h", "--json", "--limit", "0"
    )
    assert code == 0, err
    assert [e["request_id"] for e in json.loads(out)["events"]] == ["ctl-old"]
    code, out, _ = await vaultctl(vault, "audit", "--outcome", "OK", "--tool", "nope", "--json")
    assert json.loads(out)["events"] == []

    for args, says in [
        (["--since", "yesterday"], "duration"),
        (["--since", "2026-01-01"], "RFC 3339"),
        (["--since", "1h", "--until", "2h"], "--until must be after --since"),
        (["--follow", "--until", "1h"], "no --until"),
    ]:
        code, out, err = await vaultctl(vault, "audit", *args)
        assert code == 2, (args, code, out, err)
        assert says in err, (args, err)
    code, _, err = await vaultctl(vault, "audit", "--outcome", "GREAT")
    assert code == 7, err  # INVALID_ARGUMENT from the server
    assert "INVALID_ARGUMENT" in err and "status code name" in err


async def read_until(
    stream: Any, wanted: set[str], seen: list[str], methods: list[str], timeout: float
) -> None:
    """Read JSON lines into ``seen`` (request ids) and ``methods`` until every id of
    ``wanted`` is there."""
    async with asyncio.timeout(timeout):
        while not wanted <= set(seen):
            line = await stream.readline()
            assert line, f"vaultctl stopped; saw {seen}"
            event = json.loads(line)
            seen.append(event["request_id"])
            methods.append(event["method"])


async def test_since_follow_prints_each_new_event_once_until_sigint(vault: VaultHandle) -> None:
    now = datetime.now(UTC)
    await insert_event(vault, "before-start", now - timedelta(minutes=20), "/x.S/Before")
    await insert_event(vault, "too-old", now - timedelta(hours=2), "/x.S/TooOld")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vaultsvc_client.cli",
        "audit",
        "--since",
        "1h",
        "--follow",
        "--interval",
        "0.2",
        "--json",
        cwd=REPO_ROOT,
        env=env_for(vault),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    methods: list[str] = []
    try:
        assert proc.stdout is not None
        await read_until(proc.stdout, {"before-start"}, seen, methods, 30)
        # After it started: calls, two events sharing one timestamp, and one that becomes
        # visible late (its time is older than events already printed).
        secrets = sgrpc.SecretServiceStub(vault.channel("admin"))
        await secrets.CreateSecret(
            spb.CreateSecretRequest(name="follow_a", value="v-1"), timeout=10
        )
        same = datetime.now(UTC)
        await insert_event(vault, "twin-1", same, "/x.S/Twin")
        await insert_event(vault, "twin-2", same, "/x.S/Twin")
        await read_until(proc.stdout, {"twin-1", "twin-2"}, seen, methods, 30)
        await insert_event(vault, "late", same - timedelta(seconds=30), "/x.S/Late")
        await insert_event(vault, "twin-3", same, "/x.S/Twin")
        await read_until(proc.stdout, {"late", "twin-3"}, seen, methods, 30)
        await asyncio.sleep(1.0)  # a few more polls: nothing may come twice
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    for line in out.decode().splitlines():
        event = json.loads(line)
        seen.append(event["request_id"])
        methods.append(event["method"])
    assert "too-old" not in seen
    assert len(seen) == len(set(seen)), seen
    # oldest first; the call made after it started is there once, before the twins
    assert seen.index("before-start") < seen.index("twin-1")
    created = [i for i, m in enumerate(methods) if m.endswith("SecretService/CreateSecret")]
    assert len(created) == 1, list(zip(seen, methods, strict=True))
    assert seen.index("before-start") < created[0] < seen.index("twin-1")
