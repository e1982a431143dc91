"""The real process: `python -m vaultsvc serve` with embedded Postgres, restarts, SIGTERM."""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from interakt.vault.v1 import secret_service_pb2 as pb
from interakt.vault.v1 import secret_service_pb2_grpc as pbg

from tests.support.cli import ServeProcess, cli_env, run_cli, start_serve
from tests.support.rpc import bearer
from vaultsvc.auth import hash_token, new_token
from vaultsvc.crypto import generate_master_key
from vaultsvc.storage.embedded import running_uri


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Outside pytest's 0700 tmp tree: Postgres runs as its own OS user and must reach it."""
    base = Path(tempfile.mkdtemp(prefix="vaultsvc-serve-"))
    yield base / "vault-data"
    shutil.rmtree(base, ignore_errors=True)


@dataclass
class ServeSetup:
    env: dict[str, str]
    admin_token: str
    data_dir: Path

    async def start(self) -> ServeProcess:
        log = self.data_dir.parent / f"serve-{uuid.uuid4().hex[:8]}.log"
        return await start_serve(self.env, log)


@pytest.fixture
def serve_env(data_dir: Path) -> ServeSetup:
    key_id, key = generate_master_key()
    token = new_token()
    env = cli_env(
        None,
        f"{key_id}:{key}",
        VAULT_TOKENS=f"ops:admin:{hash_token(token).hex()}",
        VAULT_DATA_DIR=str(data_dir),
    )
    return ServeSetup(env, token, data_dir)


async def test_restart_keeps_secrets_and_sigterm_exits_cleanly(
    data_dir: Path, serve_env: ServeSetup
) -> None:
    first = await serve_env.start()
    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = pbg.SecretServiceStub(channel)
        md = bearer(serve_env.admin_token)
        created = await stub.CreateSecret(
            pb.CreateSecretRequest(name="survivor", value="still-here", description="kept"),
            metadata=md,
            timeout=10,
        )
    assert await first.stop() == 0
    assert (data_dir / "pg" / "PG_VERSION").exists()

    second = await serve_env.start()
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub = pbg.SecretServiceStub(channel)
            got = await stub.GetSecret(
                pb.GetSecretRequest(name="survivor"),
                metadata=bearer(serve_env.admin_token),
                timeout=10,
            )
            assert got == created
    finally:
        assert await second.stop() == 0


async def test_sigterm_drains_in_flight_rpc_after_health_goes_not_serving(
    data_dir: Path, serve_env: ServeSetup
) -> None:
    proc = await serve_env.start()
    md = bearer(serve_env.admin_token)
    async with grpc.aio.insecure_channel(proc.address) as channel:
        stub = pbg.SecretServiceStub(channel)
        await stub.CreateSecret(pb.CreateSecretRequest(name="locked", value="v"), metadata=md)

        # Hold the row lock from outside so an UpdateSecret is genuinely in flight.
        url = running_uri(data_dir)
        blocker = await asyncpg.connect(url, timeout=10)
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM secrets WHERE name = 'locked' FOR UPDATE")
        in_flight = asyncio.ensure_future(
            stub.UpdateSecret(
                pb.UpdateSecretRequest(name="locked", description="finished"),
                metadata=md,
                timeout=30,
            )
        )
        await asyncio.sleep(0.5)
        assert not in_flight.done()

        proc.proc.send_signal(signal.SIGTERM)
        # Health flips to NOT_SERVING while the update is still waiting.
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                status = reply.status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
            except grpc.aio.AioRpcError:
                break
            await asyncio.sleep(0.05)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not in_flight.done()

        await tx.rollback()
        await blocker.close()
        updated = await in_flight
        assert updated.description == "finished"
    assert await asyncio.wait_for(proc.proc.wait(), timeout=30) == 0


async def test_serve_refuses_to_start_without_master_keys(tmp_path: Path) -> None:
    done = await run_cli(["serve"], cli_env(None, None, VAULT_DATA_DIR=str(tmp_path / "d")))
    assert done.returncode != 0
    assert "VAULT_MASTER_KEYS" in done.stderr
    assert not (tmp_path / "d").exists(), "nothing is created before the config is valid"
