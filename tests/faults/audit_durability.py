"""Audit durability under ``kill -9``: every resolve a client saw succeed has its event.

Two experiments, each against a real ``python -m vaultsvc serve`` subprocess and a real
Postgres the experiment controls:

- ``vault kill -9``: a resolve burst runs, the vault process is SIGKILLed mid-burst;
- ``postgres kill -9``: the postmaster is SIGKILLed mid-burst, the burst goes on against
  the vault for a while, then the vault is SIGKILLed too (so events held only in its
  memory do not count) and Postgres is restarted.

Afterwards every request id the clients received with an OK reply (the server's id, from
the reply's ``x-request-id`` trailing metadata) is looked up in ``audit_events``; one that
is missing is a *lost* event. The integration tests run short versions; ``make
faults-audit`` (``python -m tests.faults.audit_durability``) runs longer ones and prints a
table: experiment → what clients saw → what was lost (must be nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rgrpc
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as sgrpc

from tests.support.cli import ServeProcess, cli_env, start_serve
from tests.support.faults import child_pids, postmaster_pid
from tests.support.vault import create_database, sql, start_embedded
from vaultsvc.auth import hash_token, new_token
from vaultsvc.crypto import generate_master_key
from vaultsvc.storage.embedded import EmbeddedPostgres

SECRET_VALUE = "durable-audit-value-5d1e"
REQUEST = rpb.ResolveTemplateRequest(
    fields=[
        rpb.TemplateField(
            key="auth", template="Bearer {{secret:burst_key}}", encoding=rpb.ENCODING_HEADER
        )
    ],
    tool="durability",
)


@dataclass
class Outcome:
    """What one experiment's clients saw, and which of their OK resolves left no event."""

    experiment: str
    ok_request_ids: list[str] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    counted: int = -1
    """Resolves of ``burst_key`` its usage counts (issue 10): one per OK resolve event."""
    ok_events: int = -1
    """OK resolve events of ``burst_key`` in the audit trail."""

    def seen(self) -> str:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items()))
        return f"{len(self.ok_request_ids)} OK" + (f"; {failed}" if failed else "")


@dataclass
class _Vault:
    serve: ServeProcess
    database_url: str
    admin: str
    resolver: str


def _failure_label(err: grpc.aio.AioRpcError) -> str:
    label = err.code().name
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return f"{label}/{info.reason}"
    return label


async def _start_vault(pg: EmbeddedPostgres, workdir: Path, name: str) -> _Vault:
    url = await create_database(pg)
    key_id, key = generate_master_key()
    admin, resolver = new_token(), new_token()
    tokens = ",".join(
        f"{principal}:{role}:{hash_token(token).hex()}"
        for principal, role, token in (("ops", "admin", admin), ("tool", "resolver", resolver))
    )
    env = cli_env(url, f"{key_id}:{key}", VAULT_TOKENS=tokens)
    serve = await start_serve(env, workdir / f"{name}.stderr")
    async with grpc.aio.insecure_channel(serve.address) as channel:
        await sgrpc.SecretServiceStub(channel).CreateSecret(
            spb.CreateSecretRequest(name="burst_key", value=SECRET_VALUE),
            metadata=[("authorization", f"Bearer {admin}")],
            timeout=10,
        )
    return _Vault(serve, url, admin, resolver)


async def _client(
    address: str, token: str, stop: asyncio.Event, outcome: Outcome, concurrency: int
) -> None:
    """``concurrency`` closed loops of resolves until ``stop``; records what each saw."""
    metadata = [("authorization", f"Bearer {token}")]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = rgrpc.ResolverServiceStub(channel)

        async def loop() -> None:
            while not stop.is_set():
                call = stub.ResolveTemplate(REQUEST, metadata=metadata, timeout=5)
                try:
                    reply = await call
                except grpc.aio.AioRpcError as err:
                    outcome.failures[_failure_label(err)] += 1
                    await asyncio.sleep(0.02)
                    continue
                assert reply.fields[0].value == f"Bearer {SECRET_VALUE}"
                trailing = dict(await call.trailing_metadata() or ())
                outcome.ok_request_ids.append(str(trailing["x-request-id"]))

        await asyncio.gather(*(loop() for _ in range(concurrency)))


async def _lost(database_url: str, request_ids: list[str]) -> list[str]:
    rows = await sql(
        database_url,
        "SELECT request_id FROM audit_events WHERE request_id = ANY($1::text[])",
        request_ids,
    )
    found = {r["request_id"] for r in rows}
    return sorted(set(request_ids) - found)


def _kill(serve: ServeProcess) -> None:
    with contextlib.suppress(ProcessLookupError):
        serve.proc.send_signal(signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    return state != "Z"


async def kill_postgres(pg: EmbeddedPostgres, timeout: float = 60) -> None:
    """SIGKILL the postmaster, then wait until its backends have all exited."""
    pid = postmaster_pid(pg)
    children = child_pids(pid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in (pid, *children)):
        if time.monotonic() > deadline:
            raise AssertionError("Postgres backends outlived their postmaster")
        await asyncio.sleep(0.1)
    await asyncio.to_thread(_remove_lock_files, pg)


def _remove_lock_files(pg: EmbeddedPostgres) -> None:
    """A killed postmaster can linger as a zombie when nothing reaps it (a container's
    PID 1); Postgres then takes its lock files for a live server. It is gone: remove them."""
    socket_dir = pg.socket_dir
    stale = [pg.pgdata / "postmaster.pid"]
    if socket_dir is not None:
        stale += list(Path(socket_dir).glob(".s.PGSQL.*.lock"))
    for path in stale:
        path.unlink(missing_ok=True)


async def vault_kill(
    pg: EmbeddedPostgres, workdir: Path, *, seconds: float, concurrency: int = 16
) -> Outcome:
    """SIGKILL the vault during a resolve burst."""
    outcome = Outcome("vault kill -9 during a resolve burst")
    vault = await _start_vault(pg, workdir, "vault-kill")
    stop = asyncio.Event()
    client = asyncio.create_task(
        _client(vault.serve.address, vault.resolver, stop, outcome, concurrency)
    )
    try:
        await asyncio.sleep(seconds)
        _kill(vault.serve)
        await vault.serve.proc.wait()
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        _kill(vault.serve)
        await client
    outcome.lost = await _lost(vault.database_url, outcome.ok_request_ids)
    outcome.counted, outcome.ok_events = await _usage(vault.database_url)
    return outcome


async def _usage(database_url: str) -> tuple[int, int]:
    """(usage count of ``burst_key``, OK resolve events naming it): equal, as both are
    written in one statement (the usage as a pending row, folded here: storage/usage.py)."""
    await sql(database_url, "SELECT vault_fold_usage(1000000, 20)")
    counted = await sql(
        database_url,
        "SELECT u.resolve_count FROM secret_usage u JOIN secrets s ON s.id = u.secret_id "
        "WHERE s.name = 'burst_key'",
    )
    events = await sql(
        database_url,
        "SELECT count(*) AS n FROM audit_events WHERE outcome = 'OK' "
        "AND method LIKE '%/ResolveTemplate' AND 'burst_key' = ANY(secret_names)",
    )
    return (int(counted[0]["resolve_count"]) if counted else 0), int(events[0]["n"])


async def postgres_kill(
    pg: EmbeddedPostgres, workdir: Path, *, seconds: float, concurrency: int = 16
) -> Outcome:
    """SIGKILL Postgres during a resolve burst; the burst goes on for a while, then the
    vault is SIGKILLed too, so an event that reached only its memory counts as lost."""
    outcome = Outcome("postgres kill -9 during a resolve burst")
    vault = await _start_vault(pg, workdir, "postgres-kill")
    stop = asyncio.Event()
    client = asyncio.create_task(
        _client(vault.serve.address, vault.resolver, stop, outcome, concurrency)
    )
    try:
        await asyncio.sleep(seconds)
        await kill_postgres(pg)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        _kill(vault.serve)
        await client
        await vault.serve.proc.wait()
    await asyncio.to_thread(pg.restart_server)
    outcome.lost = await _lost(vault.database_url, outcome.ok_request_ids)
    return outcome


def table(outcomes: list[Outcome]) -> str:
    rows = [("experiment", "what clients saw", "lost (answered OK, no event)")]
    for o in outcomes:
        lost = "nothing" if not o.lost else f"{len(o.lost)} of {len(o.ok_request_ids)}"
        rows.append((o.experiment, o.seen(), lost))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


async def _main(seconds: float, rounds: int, concurrency: int) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="vaultsvc-faults-"))
    pg = start_embedded("vaultsvc-faults-pg-")
    outcomes: list[Outcome] = []
    try:
        for _ in range(rounds):
            outcomes.append(await vault_kill(pg, workdir, seconds=seconds, concurrency=concurrency))
            outcomes.append(
                await postgres_kill(pg, workdir, seconds=seconds, concurrency=concurrency)
            )
    finally:
        pg.stop()
        shutil.rmtree(pg.data_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(outcomes))
    return 1 if any(o.lost for o in outcomes) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="burst before each kill")
    parser.add_argument("--rounds", type=int, default=3, help="times each experiment runs")
    parser.add_argument("--concurrency", type=int, default=32, help="resolves in flight")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(_main(args.seconds, args.rounds, args.concurrency)))


if __name__ == "__main__":
    main()
