"""The real process: `python -m vaultsvc serve` with embedded Postgres, restarts, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from interakt.vault.v1 import secret_service_pb2 as pb
from interakt.vault.v1 import secret_service_pb2_grpc as pbg

from vaultsvc.auth import hash_token, new_token
from vaultsvc.crypto import generate_master_key
from vaultsvc.storage.embedded import running_uri

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServeProcess:
    proc: asyncio.subprocess.Process
    address: str
    admin_token: str
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


async def start_serve(data_dir: Path, env_extra: dict[str, str]) -> ServeProcess:
    port = free_port()
    token = env_extra.pop("_admin_token")
    stderr_path = data_dir.parent / f"serve-{port}.log"
    env = {
        **os.environ,
        "VAULT_DATA_DIR": str(data_dir),
        "VAULT_LISTEN": f"127.0.0.1:{port}",
        **env_extra,
    }
    env.pop("VAULT_DATABASE_URL", None)
    with stderr_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vaultsvc",
            "serve",
            env=env,
            cwd=str(REPO),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )
    handle = ServeProcess(proc, f"127.0.0.1:{port}", token, stderr_path)
    deadline = time.monotonic() + 60
    async with grpc.aio.insecure_channel(handle.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.returncode is not None:
                raise AssertionError(f"serve exited early: {handle.stderr()}")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return handle
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"serve did not become healthy: {handle.stderr()}")
            await asyncio.sleep(0.2)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Outside pytest's 0700 tmp tree: Postgres runs as its own OS user and must reach it."""
    base = Path(tempfile.mkdtemp(prefix="vaultsvc-serve-"))
    yield base / "vault-data"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def serve_env() -> AsyncIterator[dict[str, str]]:
    key_id, key = generate_master_key()
    token = new_token()
    yield {
        "VAULT_MASTER_KEYS": f"{key_id}:{key}",
        "VAULT_TOKENS": f"ops:admin:{hash_token(token).hex()}",
        "_admin_token": token,
    }


def admin_metadata(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def stop(process: ServeProcess, timeout: float = 30) -> int:
    process.proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.proc.wait(), timeout=timeout)


async def test_restart_keeps_secrets_and_sigterm_exits_cleanly(
    data_dir: Path, serve_env: dict[str, str]
) -> None:
    first = await start_serve(data_dir, dict(serve_env))
    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = pbg.SecretServiceStub(channel)
        md = admin_metadata(first.admin_token)
        created = await stub.CreateSecret(
            pb.CreateSecretRequest(name="survivor", value="still-here", description="kept"),
            metadata=md,
            timeout=10,
        )
    assert await stop(first) == 0
    assert (data_dir / "pg" / "PG_VERSION").exists()

    second = await start_serve(data_dir, dict(serve_env))
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub = pbg.SecretServiceStub(channel)
            got = await stub.GetSecret(
                pb.GetSecretRequest(name="survivor"),
                metadata=admin_metadata(second.admin_token),
                timeout=10,
            )
            assert got == created
    finally:
        assert await stop(second) == 0


async def test_sigterm_drains_in_flight_rpc_after_health_goes_not_serving(
    data_dir: Path, serve_env: dict[str, str]
) -> None:
    proc = await start_serve(data_dir, dict(serve_env))
    md = admin_metadata(proc.admin_token)
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env["VAULT_DATA_DIR"] = str(tmp_path / "d")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vaultsvc",
        "serve",
        env=env,
        cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode != 0
    assert b"VAULT_MASTER_KEYS" in err
    assert not (tmp_path / "d").exists(), "nothing is created before the config is valid"
