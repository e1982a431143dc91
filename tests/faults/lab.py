"""What a fault experiment works with: its own Postgres, a vault process on it, a workload
of clients that records what they were told, and the check of what was lost."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2 as pb
from interakt.vault.v1 import secret_service_pb2_grpc as pbg

from tests.support.cli import ServeProcess, cli_env, start_serve
from tests.support.rpc import error_info
from tests.support.vault import AuthInterceptor, create_database, sql, start_embedded
from vaultsvc.auth import ADMIN, RESOLVER, hash_token, new_token
from vaultsvc.crypto import generate_master_key
from vaultsvc.storage.embedded import EmbeddedPostgres


@dataclass
class Result:
    """One row of the table: what clients saw, and what was lost."""

    name: str
    seen: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class _Owned:
    """A secret one client owns: the etag it was last told, and whether an update whose
    outcome it never learned came after it (then the database may hold a newer one)."""

    etag: str
    ambiguous: bool = False


class Lab:
    """A Postgres and a vault process for one experiment (``async with Lab.open(...)``)."""

    def __init__(self, pg: EmbeddedPostgres, url: str, workdir: Path, duration: float) -> None:
        self.pg = pg
        self.url = url
        self.workdir = workdir
        self.duration = duration
        key_id, key = generate_master_key()
        self.tokens = {ADMIN: new_token(), RESOLVER: new_token()}
        self.env = cli_env(
            url,
            f"{key_id}:{key}",
            VAULT_TOKENS=",".join(
                f"fault-{role}:{role}:{hash_token(token).hex()}"
                for role, token in self.tokens.items()
            ),
            VAULT_DATABASE_CONNECT_TIMEOUT="1",
            VAULT_DATABASE_ACQUIRE_TIMEOUT="1",
            VAULT_DATABASE_OPERATION_TIMEOUT="2",
            VAULT_DATABASE_STATEMENT_TIMEOUT_MS="1500",
            VAULT_DATABASE_BREAKER_PROBE_INTERVAL="0.2",
            VAULT_SERVER_AUDIT_FLUSH_INTERVAL="0.05",
            VAULT_SERVER_GRACE_PERIOD="2",
            VAULT_SERVER_SHUTDOWN_DELAY="0",
        )
        self.vault: ServeProcess | None = None
        self._starts = 0
        self.result = Result("")
        self._owned: dict[str, _Owned] = {}
        self._resolved: list[str] = []  # request ids of answered resolves
        self._channels: list[grpc.aio.Channel] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, duration: float) -> AsyncIterator[Lab]:
        pg = await asyncio.to_thread(start_embedded, "vaultsvc-faults-pg-")
        workdir = Path(tempfile.mkdtemp(prefix="vaultsvc-faults-"))
        lab = cls(pg, await create_database(pg), workdir, duration)
        try:
            await lab.start_vault()
            await lab.secrets.CreateSecret(pb.CreateSecretRequest(name="r0", value="v-r0"))
            yield lab
        finally:
            await lab.stop_vault()
            await asyncio.to_thread(pg.stop)
            shutil.rmtree(pg.data_dir, ignore_errors=True)
            shutil.rmtree(workdir, ignore_errors=True)

    # ------------------------------------------------------------------ the vault

    async def start_vault(self) -> None:
        self._starts += 1
        self.vault = await start_serve(self.env, self.workdir / f"serve-{self._starts}.log")
        for channel in self._channels:
            await channel.close(grace=None)
        self._channels = []
        admin, resolver = self._channel(ADMIN), self._channel(RESOLVER)
        self.secrets = pbg.SecretServiceStub(admin)
        self.resolver = rpbg.ResolverServiceStub(resolver)

    def _channel(self, role: str) -> grpc.aio.Channel:
        assert self.vault is not None
        channel = grpc.aio.insecure_channel(
            self.vault.address, interceptors=[AuthInterceptor(self.tokens[role])]
        )
        self._channels.append(channel)
        return channel

    def kill9_vault(self) -> None:
        assert self.vault is not None
        self.vault.proc.kill()

    async def stop_vault(self) -> None:
        for channel in self._channels:
            await channel.close(grace=None)
        self._channels = []
        if self.vault is not None and self.vault.proc.returncode is None:
            await self.vault.stop()
        self.vault = None

    # ------------------------------------------------------------------ workload

    async def workload(self, clients: int, fault: Callable[[], Awaitable[Any]]) -> None:
        """``clients`` loops of create / update / resolve while ``fault`` runs, then until
        the vault answers again (it must recover by itself)."""
        stop = asyncio.Event()
        tasks = [asyncio.create_task(self._client(i, stop)) for i in range(clients)]
        try:
            await fault()
            await self.until_recovered()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def until_recovered(self, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while True:
            try:
                await self.secrets.ListSecrets(pb.ListSecretsRequest(page_size=1), timeout=2)
                await self.resolver.ResolveTemplate(self._request("r0"), timeout=2)
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise AssertionError("the vault did not recover by itself") from None
                await asyncio.sleep(0.2)

    @staticmethod
    def _request(name: str) -> rpb.ResolveTemplateRequest:
        return rpb.ResolveTemplateRequest(
            fields=[rpb.TemplateField(key="h", template=f"Bearer {{{{secret:{name}}}}}")]
        )

    def _saw(self, err: grpc.aio.AioRpcError | None) -> None:
        if err is None:
            self.result.seen["OK"] += 1
            return
        try:
            reason = error_info(err).reason
        except AssertionError:  # e.g. a client-side DEADLINE_EXCEEDED carries no status
            reason = "-"
        self.result.seen[f"{err.code().name} {reason}"] += 1

    async def _call(self, call: Any) -> tuple[Any, grpc.aio.AioRpcError | None]:
        try:
            reply = await call
        except grpc.aio.AioRpcError as err:
            self._saw(err)
            return None, err
        self._saw(None)
        return reply, None

    async def _client(self, number: int, stop: asyncio.Event) -> None:
        rng = random.Random(number)
        mine: list[str] = []
        serial = 0
        while not stop.is_set():
            try:
                op = rng.random()
                if op < 0.3 or not mine:
                    serial += 1
                    name = f"c{number}_{serial}"
                    reply, err = await self._call(
                        self.secrets.CreateSecret(
                            pb.CreateSecretRequest(name=name, value=f"v-{name}"), timeout=5
                        )
                    )
                    if reply is not None:
                        self._owned[name] = _Owned(reply.etag)
                        mine.append(name)
                elif op < 0.6:
                    name = rng.choice(mine)
                    owned = self._owned[name]
                    reply, err = await self._call(
                        self.secrets.UpdateSecret(
                            pb.UpdateSecretRequest(name=name, value=f"u{serial}", etag=owned.etag),
                            timeout=5,
                        )
                    )
                    if reply is not None:
                        self._owned[name] = _Owned(reply.etag)
                    elif err is not None and err.code() != grpc.StatusCode.ABORTED:
                        owned.ambiguous = True
                else:
                    call = self.resolver.ResolveTemplate(self._request(rng.choice(mine)), timeout=5)
                    reply, err = await self._call(call)
                    if reply is not None:
                        for key, value in await call.trailing_metadata() or ():
                            if key == "x-request-id":
                                self._resolved.append(str(value))
            except (grpc.aio.UsageError, RuntimeError):  # channel closed under a restart
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ the check

    async def check_nothing_lost(self) -> None:
        """Every acknowledged write is in the database; every answered resolve has its
        audit event (after the vault flushed: it is stopped gracefully first)."""
        await self.stop_vault()
        rows = await sql(self.url, "SELECT name, etag FROM secrets")
        stored = {r["name"]: r["etag"] for r in rows}
        for name, owned in self._owned.items():
            if name not in stored:
                self.result.lost.append(f"acknowledged create {name}")
            elif stored[name] != owned.etag and not owned.ambiguous:
                self.result.lost.append(f"acknowledged update of {name}")
        audited = {
            r["request_id"]
            for r in await sql(
                self.url,
                "SELECT request_id FROM audit_events WHERE request_id = ANY($1::text[])",
                self._resolved,
            )
        }
        missing = [rid for rid in self._resolved if rid not in audited]
        if missing:
            self.result.lost.append(f"{len(missing)} answered resolves without audit event")
        self.result.note = (
            f"{len(self._owned)} creates acknowledged, {len(self._resolved)} resolves answered"
        )
