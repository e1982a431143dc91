"""Issue 15 item 14: a second vault on a port that one already serves refuses to start
(one line, exit code 3) instead of silently sharing it; the first vault is unaffected."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest
from interakt.vault.v1 import secret_service_pb2 as pb
from interakt.vault.v1 import secret_service_pb2_grpc as pbg

from tests.support.cli import cli_env, finish, start_cli, start_serve
from tests.support.rpc import bearer
from tests.support.vault import create_database
from vaultsvc.auth import hash_token, new_token
from vaultsvc.cli.common import EXIT_PORT_IN_USE
from vaultsvc.crypto import generate_master_key
from vaultsvc.storage.embedded import EmbeddedPostgres


async def _env(pg: EmbeddedPostgres, token: str, **extra: str) -> dict[str, str]:
    key_id, key = generate_master_key()
    return cli_env(
        await create_database(pg),
        f"{key_id}:{key}",
        VAULT_TOKENS=f"ops:admin:{hash_token(token).hex()}",
        **extra,
    )


async def _still_serves(address: str, token: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pbg.SecretServiceStub(channel)
        name = f"s{uuid.uuid4().hex[:8]}"
        await stub.CreateSecret(
            pb.CreateSecretRequest(name=name, value="v"), metadata=bearer(token), timeout=10
        )
        got = await stub.GetSecret(
            pb.GetSecretRequest(name=name), metadata=bearer(token), timeout=10
        )
        assert got.name == name


@pytest.mark.parametrize(
    ("first_workers", "second_workers"), [("1", "1"), ("2", "1"), ("1", "2"), ("2", "2")]
)
async def test_second_vault_on_a_taken_port_exits_with_one_line(
    pg: EmbeddedPostgres, tmp_path: Path, first_workers: str, second_workers: str
) -> None:
    token = new_token()
    first = await start_serve(
        await _env(pg, token, VAULT_WORKERS=first_workers), tmp_path / "first.log"
    )
    try:
        env = await _env(pg, token, VAULT_LISTEN=first.address, VAULT_WORKERS=second_workers)
        second = await start_cli(["serve"], env)
        try:
            done = await finish(second, timeout=60)
        except AssertionError:
            raise AssertionError(f"a second vault started on {first.address}") from None
        assert done.returncode == EXIT_PORT_IN_USE, done.output
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("vaultsvc: error: cannot listen on " + first.address)
        assert "already in use" in lines[0]
        assert "Traceback" not in done.output
        await _still_serves(first.address, token)
    finally:
        # On failure, show why the first vault did not stop cleanly (its own log).
        assert await first.stop() == 0, first.stderr()[-4000:]


async def test_port_in_use_by_another_program(pg: EmbeddedPostgres) -> None:
    """Not only vaults: any listener on the port (here one with SO_REUSEPORT, as grpc's)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, reuse_port=True)
    port = server.sockets[0].getsockname()[1]
    try:
        for workers in ("1", "2"):
            env = await _env(
                pg, new_token(), VAULT_LISTEN=f"127.0.0.1:{port}", VAULT_WORKERS=workers
            )
            done = await finish(await start_cli(["serve"], env), timeout=60)
            assert done.returncode == EXIT_PORT_IN_USE, done.output
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    finally:
        server.close()
        await server.wait_closed()
