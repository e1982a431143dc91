"""``serve --workers N``: worker processes sharing one port under a small supervisor."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
import httpx
import psutil
from interakt.vault.v1 import secret_service_pb2 as pb
from interakt.vault.v1 import secret_service_pb2_grpc as pbg

from tests.support.cli import ServeProcess, bound_address, cli_env, start_serve
from tests.support.rpc import bearer, error_info
from tests.support.vault import create_database
from vaultsvc.auth import hash_token, new_token
from vaultsvc.cli.common import EXIT_WORKERS_FAILING
from vaultsvc.crypto import generate_master_key
from vaultsvc.storage.embedded import EmbeddedPostgres
from vaultsvc.supervisor import RESTART_LIMIT


class Workers:
    def __init__(self, serve: ServeProcess, token: str, url: str) -> None:
        self.serve = serve
        self.token = token
        self.url = url

    def pids(self) -> set[int]:
        """The live worker processes (the supervisor's spawned children)."""
        found: set[int] = set()
        try:
            children = psutil.Process(self.serve.proc.pid).children()
        except psutil.NoSuchProcess:
            return found
        for child in children:
            try:
                cmdline = " ".join(child.cmdline())
                if "spawn_main" in cmdline and child.status() != psutil.STATUS_ZOMBIE:
                    found.add(child.pid)
            except psutil.NoSuchProcess:
                continue
        return found

    def channel(self) -> grpc.aio.Channel:
        """A channel with its own connection (grpc would share one between channels)."""
        return grpc.aio.insecure_channel(
            self.serve.address, options=[("grpc.use_local_subchannel_pool", 1)]
        )

    async def call(self, channel: grpc.aio.Channel) -> None:
        await pbg.SecretServiceStub(channel).ListSecrets(
            pb.ListSecretsRequest(), metadata=bearer(self.token), timeout=10
        )

    async def wait_log(self, text: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.serve.stderr().count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count}x {text!r} in: {self.serve.stderr()[-3000:]}")
            await asyncio.sleep(0.1)


async def _start(
    pg: EmbeddedPostgres, tmp_path: Path, workers: str = "2", **extra_env: str
) -> Workers:
    key_id, key = generate_master_key()
    token = new_token()
    url = await create_database(pg)
    env = cli_env(
        url,
        f"{key_id}:{key}",
        VAULT_TOKENS=f"ops:admin:{hash_token(token).hex()}",
        VAULT_WORKERS=workers,
        VAULT_SERVER_SHUTDOWN_DELAY="0.5",
        **extra_env,
    )
    serve = await start_serve(env, tmp_path / f"serve-{uuid.uuid4().hex[:6]}.log")
    handle = Workers(serve, token, url)
    await handle.wait_log("worker listening", 2)
    return handle


def _all_gone(pids: set[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def _connections_by_worker(pids: set[int], port: int) -> dict[int, int]:
    counts = dict.fromkeys(pids, 0)
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == "ESTABLISHED":
                counts[pid] += 1
    return counts


async def test_two_workers_share_the_port_and_both_serve(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    vault = await _start(pg, tmp_path)
    try:
        # Port 0 was resolved once, by the supervisor: one ready line, one concrete port.
        ready = [a for a in map(bound_address, vault.serve.stderr().splitlines()) if a]
        assert ready == [vault.serve.address]
        port = int(vault.serve.address.rpartition(":")[2])
        assert port != 0
        lines = vault.serve.stderr().splitlines()
        listening = [line for line in lines if "worker listening" in line]
        assert len(listening) == 2
        assert all(f":{port}" in line for line in listening)
        assert {"worker=1", "worker=2"} <= {w for line in listening for w in line.split()}

        pids = vault.pids()
        assert len(pids) == 2
        channels = [vault.channel() for _ in range(24)]
        try:
            await asyncio.gather(*(vault.call(channel) for channel in channels))
            counts = _connections_by_worker(pids, port)
            # Every connection carried a successful call; the kernel spread them.
            assert sum(counts.values()) == len(channels), counts
            assert all(count > 0 for count in counts.values()), counts
        finally:
            for channel in channels:
                await channel.close()
    finally:
        assert await vault.serve.stop() == 0


async def test_workers_share_the_console_port_claimed_by_the_supervisor(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    vault = await _start(pg, tmp_path, VAULT_CONSOLE_LISTEN="127.0.0.1:0")
    try:
        # The supervisor resolved console port 0 once; every worker serves that one port.
        announced = [
            line for line in vault.serve.stderr().splitlines() if "vault listening" in line
        ]
        match = re.search(r"console=\"?127\.0\.0\.1:(\d+)", announced[0])
        assert match is not None, announced
        port = int(match.group(1))
        assert port != 0
        consoles = [
            line for line in vault.serve.stderr().splitlines() if "console listening" in line
        ]
        assert len(consoles) == 2 and all(f"127.0.0.1:{port}" in line for line in consoles)

        pids = vault.pids()
        clients = [
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                headers={"authorization": f"Bearer {vault.token}"},
            )
            for _ in range(24)
        ]
        try:
            replies = await asyncio.gather(*(c.get("/api/v1/secrets") for c in clients))
            assert [r.status_code for r in replies] == [200] * len(clients)
            counts = _connections_by_worker(pids, port)
            assert sum(counts.values()) == len(clients), counts
            assert all(count > 0 for count in counts.values()), counts
        finally:
            for client in clients:
                await client.aclose()
    finally:
        assert await vault.serve.stop() == 0


async def test_sigterm_drains_every_worker(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    vault = await _start(pg, tmp_path)
    workers = vault.pids()
    async with vault.channel() as channel:
        stub = pbg.SecretServiceStub(channel)
        md = bearer(vault.token)
        await stub.CreateSecret(pb.CreateSecretRequest(name="locked", value="v"), metadata=md)
        blocker = await asyncpg.connect(vault.url, timeout=10)
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
        vault.serve.proc.send_signal(signal.SIGTERM)
        await vault.wait_log("refusing new calls", 2)
        # New calls, on either worker, are refused with UNAVAILABLE.
        refused = 0
        for _ in range(6):
            async with vault.channel() as fresh:
                try:
                    await vault.call(fresh)
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                    if err.trailing_metadata() and any(
                        key == "grpc-status-details-bin" for key, _ in err.trailing_metadata()
                    ):
                        assert error_info(err).reason == "UNAVAILABLE"
                    refused += 1
        assert refused == 6
        assert not in_flight.done()
        await tx.rollback()
        await blocker.close()
        updated = await in_flight
        assert updated.description == "finished"
    assert await asyncio.wait_for(vault.serve.proc.wait(), timeout=60) == 0
    assert "did not drain" not in vault.serve.stderr()
    assert vault.serve.stderr().count("vault stopped") == 2
    assert _all_gone(workers)


async def test_a_killed_worker_is_restarted(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    vault = await _start(pg, tmp_path)
    try:
        before = vault.pids()
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        await vault.wait_log("worker died unexpectedly")
        died = next(line for line in vault.serve.stderr().splitlines() if "died" in line)
        assert f"pid={victim}" in died and "SIGKILL" in died
        await vault.wait_log("worker listening", 3)
        after = vault.pids()
        assert len(after) == 2 and victim not in after and (before - {victim}) <= after
        # Serving resumed on every worker, the new one included.
        port = int(vault.serve.address.rpartition(":")[2])
        channels = [vault.channel() for _ in range(24)]
        try:
            await asyncio.gather(*(vault.call(channel) for channel in channels))
            counts = _connections_by_worker(after, port)
            assert all(count > 0 for count in counts.values()), counts
        finally:
            for channel in channels:
                await channel.close()
    finally:
        assert await vault.serve.stop() == 0


async def test_workers_that_keep_dying_stop_the_vault(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    vault = await _start(pg, tmp_path)
    killed: set[int] = set()
    deadline = time.monotonic() + 120
    while vault.serve.proc.returncode is None:
        assert time.monotonic() < deadline, vault.serve.stderr()[-3000:]
        for pid in vault.pids() - killed:
            killed.add(pid)
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.05)
    assert await vault.serve.proc.wait() == EXIT_WORKERS_FAILING
    assert len(killed) >= RESTART_LIMIT + 1
    assert "workers keep dying; stopping the vault" in vault.serve.stderr()
    assert _all_gone(killed)
