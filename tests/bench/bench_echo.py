"""ResolveTemplate against an echo ResolverService, side by side, in one process tree.

Run with ``make bench`` (``python -m tests.bench.bench_echo``; ``--quick`` for a smoke run
of well under a minute). It starts:

- one embedded Postgres with three databases: the main one (5 "warm" secrets plus a
  cold pool of 100,000), a small one (1,000) and a big one (1,000,000). Rows are inserted
  with SQL, each value properly sealed with :class:`vaultsvc.crypto.Envelope` under the
  vault's master key and bound to its row (the same AAD as CreateSecret), so a resolve
  opens them exactly as it opens secrets created through the API;
- an **echo ResolverService**: the same proto and grpc.aio server with the vault's grpc
  server options, no auth, no database, no crypto; it returns each field's template as
  its value. It runs as N spawned processes sharing the port with SO_REUSEPORT, like the
  vault's workers;
- the **durable-audit floor** ("echo+audit"): the same echo processes, except that before
  each reply they commit one audit event (the names the template refers to, the tool)
  through the vault's own group commit (``AuditWriter`` over ``AuditStore``: the same
  INSERT into the same table, no usage rows). Issue 9 asks both for a reply that waits for
  its durable event and for the vault near echo; this measures what the first costs by
  itself, with no auth, cache, crypto or templates;
- the vault: ``python -m vaultsvc serve --workers N`` (a subprocess), with its sealed-row
  cache sized far below the cold pool (``VAULT_CACHE_MAX_ENTRIES``) so cold calls miss;
- the client in a separate process (spawned), running the load tool's own runner
  (``vaultsvc_client.load``: raw stub, HDR histogram), one process, closed loop, with up
  to 16 connections (one per concurrent call at most): SO_REUSEPORT spreads connections,
  not calls, over a server's workers, so with a single connection one worker would serve
  alone. Each worker's share of its server's CPU in one warm round is printed. The
  1,000-vs-1,000,000 table uses one connection, so that one worker of each vault serves
  and the two compare under the same conditions whatever the hash does.

For warm (every call names the same 5 secrets) and cold (each call names 5 secrets
drawn at random from the pool) and concurrency 1, 16 and 64, it runs interleaved
rounds (echo, floor, vault, then the reverse order, ...) and prints QPS, p50, p99 and
server CPU microseconds per call, each with its ratio to echo, and the floor's ratios to
echo beside the vault's to the floor. Server CPU is utime+stime from /proc of the
server processes: the echo workers; the floor's workers and every process of its
Postgres; the vault supervisor, its workers and every process of its Postgres
(backends, WAL writer: what a resolve and its group-committed audit cost). It also
prints the commit latency of this machine's database
(single-row INSERTs, each its own transaction: what group commit waits for), a second
table with cold resolve p50 at 1,000 versus 1,000,000 secrets, and the resident memory
of each vault worker at 1,000,000 secrets after the cold run. Finally a markdown table.

Everything runs on one machine: client, servers and Postgres share its CPUs, so the
numbers are for comparison (ratios), not capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from tests.support.cli import ServeProcess, cli_env, start_serve
from tests.support.vault import start_embedded
from vaultsvc.auth import ADMIN, RESOLVER, hash_token, new_token
from vaultsvc.crypto import (
    Envelope,
    Fingerprinter,
    SecretContext,
    generate_master_key,
    parse_master_keys,
)
from vaultsvc.storage.db import migrate
from vaultsvc.storage.embedded import EmbeddedPostgres

WARM_NAMES = tuple(f"warm_{i}" for i in range(5))
RESOLVE_METHOD = "/interakt.vault.v1.ResolverService/ResolveTemplate"
SLOTS = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The seed's shape (URL + Authorization header + JSON body), naming 5 secrets.
TEMPLATE = {
    "fields": [
        {
            "key": "url",
            "template": "https://api.example.com/orders/{{input.order_id}}?key={{secret:$1}}",
            "encoding": "url",
        },
        {"key": "header:Authorization", "template": "Bearer {{secret:$2}}", "encoding": "header"},
        {
            "key": "body",
            "template": '{"a": "{{secret:$3}}", "b": "{{secret:$4}}", "c": "{{secret:$5}}", '
            '"order_id": "{{input.order_id}}"}',
            "encoding": "json",
        },
    ],
    "inputs": {"order_id": "A-17"},
}


@dataclass(frozen=True)
class Options:
    workers: int = 2
    concurrencies: tuple[int, ...] = (1, 16, 64)
    rounds: int = 3
    round_seconds: float = 4.0
    warmup_seconds: float = 1.0
    cold_pool: int = 100_000
    cache_entries: int = 1_000
    small: int = 1_000
    big: int = 1_000_000
    scale_cache_entries: int = 100
    scale_concurrencies: tuple[int, ...] = (1, 16)
    scale_rounds: int = 3
    commits: int = 1_000
    value_size: int = 40
    shared_buffers: str | None = "1GB"
    """The bench Postgres's ``shared_buffers`` (None: Postgres's default, 128MB): sized, as a
    server holding a million secrets would be, to keep the 1,000,000-secret database's
    rows and indexes in its own cache rather than re-read from the OS page cache."""
    connections: int = 16
    """Client connections per round (at most one per concurrent call). SO_REUSEPORT spreads
    connections, not calls, over a server's workers: with one, one worker serves alone. The
    1k-vs-1M table uses one (one worker of each serves: the same conditions for both)."""

    @classmethod
    def quick(cls, workers: int = 2) -> Options:
        return cls(
            workers=workers,
            rounds=1,
            round_seconds=0.5,
            warmup_seconds=0.2,
            cold_pool=2_000,
            cache_entries=100,
            small=300,
            big=3_000,
            scale_cache_entries=20,
            scale_concurrencies=(1,),
            scale_rounds=1,
            commits=50,
            shared_buffers=None,
        )


# ---------------------------------------------------------------- measurement


@dataclass
class Cell:
    """One target in one (scenario, concurrency) cell, summed over its rounds."""

    ok: int = 0
    failed: int = 0
    elapsed: float = 0.0
    cpu_ticks: int = 0
    """Server CPU, clock ticks: the server processes plus (vault) its Postgres."""
    db_ticks: int = 0
    """The Postgres share of ``cpu_ticks``."""
    histograms: list[bytes] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, result: dict[str, Any], ticks: int, db_ticks: int = 0) -> None:
        self.ok += result["ok"]
        self.failed += result["failed"]
        self.elapsed += result["elapsed"]
        self.cpu_ticks += ticks + db_ticks
        self.db_ticks += db_ticks
        self.histograms.append(result["histogram"])
        for key, count in result["errors"].items():
            self.errors[key] = self.errors.get(key, 0) + count

    @property
    def qps(self) -> float:
        return (self.ok + self.failed) / self.elapsed if self.elapsed > 0 else 0.0

    def latency(self) -> dict[str, Any]:
        from vaultsvc_client.load.stats import LatencyHistogram

        histogram = LatencyHistogram()
        for encoded in self.histograms:
            histogram.add_encoded(encoded)
        return histogram.summary_ms()

    @property
    def p50(self) -> float:
        return float(self.latency()["p50"] or 0.0)

    @property
    def p99(self) -> float:
        return float(self.latency()["p99"] or 0.0)

    @property
    def cpu_us(self) -> float:
        calls = self.ok + self.failed
        return self.cpu_ticks * 1_000_000 / CLK_TCK / calls if calls else 0.0

    @property
    def db_us(self) -> float:
        calls = self.ok + self.failed
        return self.db_ticks * 1_000_000 / CLK_TCK / calls if calls else 0.0


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def cpu_ticks(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class ProcessSet:
    """Server processes whose CPU a round is charged: fixed pids plus the children of
    ``parents`` at the moment of each snapshot (workers, Postgres backends)."""

    def __init__(self, pids: Iterable[int], parents: Iterable[int] = ()) -> None:
        self.pids = list(pids)
        self.parents = list(parents)

    def snapshot(self) -> dict[int, int]:
        pids = set(self.pids) | set(self.parents)
        for parent in self.parents:
            pids.update(children(parent))
        return {pid: t for pid in pids if (t := cpu_ticks(pid)) is not None}

    @staticmethod
    def delta(before: dict[int, int], after: dict[int, int]) -> int:
        return sum(ticks - before.get(pid, 0) for pid, ticks in after.items())


async def postmaster_pid(url: str) -> int:
    """The postmaster: the parent of a backend (found through pg_backend_pid())."""
    conn = await asyncpg.connect(url, timeout=30)
    try:  # read while the backend lives: it exits when the connection closes
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        return await asyncio.to_thread(parent_pid, backend)
    finally:
        await conn.close()


def parent_pid(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[1])


# -------------------------------------------------------------------- echo server


def _echo_worker(
    port: int, ready: multiprocessing.connection.Connection, audit_url: str | None = None
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_echo_serve(port, ready, audit_url))


async def _echo_serve(
    port: int, ready: multiprocessing.connection.Connection, audit_url: str | None
) -> None:
    """An echo worker; with ``audit_url``, the durable-audit floor: before each reply it
    commits one audit event through the vault's own group commit (AuditWriter over
    AuditStore, the same INSERT into the same table)."""
    import grpc
    from interakt.vault.v1 import resolver_service_pb2 as rpb
    from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg

    from vaultsvc.api.frontdoor import FrontDoor
    from vaultsvc.audit import AuditWriter
    from vaultsvc.config import Settings
    from vaultsvc.domain import AuditRecord
    from vaultsvc.server import MAX_SEND_MESSAGE_BYTES
    from vaultsvc.storage.audit_store import AuditStore
    from vaultsvc.templates import compile_template

    settings = Settings()
    audit: AuditWriter | None = None
    if audit_url is not None:
        audit = AuditWriter(
            AuditStore(
                audit_url,
                connect_timeout=settings.database.connect_timeout,
                write_timeout=settings.audit_write_timeout,
            ),
            queue_size=settings.audit_buffer_size,
            write_timeout=settings.audit_write_timeout,
            stall_threshold=settings.audit_stall_threshold,
        )
        audit.start()

    class Echo(rpbg.ResolverServiceServicer):
        async def ResolveTemplate(
            self, request: rpb.ResolveTemplateRequest, context: Any
        ) -> rpb.ResolveTemplateResponse:
            if audit is not None:
                # A resolve's event: who, what, which names (read by the vault's own
                # template compiler, cached as the vault's), the tool; committed before
                # the reply leaves.
                names = sorted(
                    {
                        name
                        for f in request.fields
                        for name in compile_template(f.template, f.encoding).secret_names
                    }
                )
                await audit.commit(
                    AuditRecord(
                        principal="bench-resolver",
                        method=RESOLVE_METHOD,
                        request_id=os.urandom(16).hex(),
                        peer=context.peer(),
                        secret_names=names,
                        tool=request.tool,
                    )
                )
            return rpb.ResolveTemplateResponse(
                fields=[rpb.ResolvedField(key=f.key, value=f.template) for f in request.fields]
            )

    # The vault's own grpc server options (message sizes, streams, keepalive, ages).
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
            ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
            *FrontDoor(settings).channel_options(),
            ("grpc.so_reuseport", 1),
        ]
    )
    rpbg.add_ResolverServiceServicer_to_server(Echo(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    ready.send(bound)
    await stop.wait()
    await server.stop(0.5)
    if audit is not None:
        await audit.stop()


class EchoServer:
    """N echo processes on one port (the first binds port 0, the others its port); with
    ``audit_url``, the durable-audit floor (see :func:`_echo_serve`)."""

    def __init__(self, workers: int, audit_url: str | None = None) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[Any] = []
        self.port = 0
        for _ in range(workers):
            receive, send = self.context.Pipe(duplex=False)
            process = self.context.Process(
                target=_echo_worker, args=(self.port, send, audit_url), daemon=True
            )
            process.start()
            send.close()
            if not receive.poll(60):
                raise RuntimeError("echo worker did not start")
            self.port = receive.recv()
            self.processes.append(process)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


# ------------------------------------------------------------------------- client


def _client_main(conn: multiprocessing.connection.Connection) -> None:
    """The client process: runs one load round per request on the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from vaultsvc_client.load.options import LoadOptions
    from vaultsvc_client.load.runner import ProcessJob, ProcessRun
    from vaultsvc_client.load.scenario import parse_template_document

    scenario = parse_template_document(TEMPLATE, "bench")
    pools: dict[str, tuple[str, ...]] = {}
    while True:
        message = conn.recv()
        if message is None:
            return
        if message[0] == "pool":
            pools[message[1]] = tuple(message[2])
            continue
        _, address, token, pool, names, concurrency, seconds, connections = message
        connections = min(connections, concurrency)
        options = LoadOptions(
            address=address,
            token=token,
            tls=None,
            insecure=True,
            timeout=10.0,
            concurrency=concurrency,
            connections=connections,
            procs=1,
            duration=seconds,
            total=None,
            rps=None,
            template_file=None,
            secrets=pools[pool],
            seed_secrets=0,
            value_size=32,
            names=names,
            admin_token=None,
            tool="bench",
            output="json",
            progress=False,
        )
        job = ProcessJob(options, scenario, pools[pool], 0, concurrency, connections)

        async def one(job: ProcessJob = job) -> Any:
            run = ProcessRun(job)
            try:
                await run.setup()
                return await run.run(None, asyncio.Event())
            finally:
                await run.close()

        result = asyncio.run(one())
        conn.send(
            {
                "ok": result.ok,
                "failed": result.failed,
                "elapsed": result.elapsed,
                "histogram": result.histogram,
                "errors": {f"{c}/{r}": n for (c, r), n in result.errors.items()},
            }
        )


class Client:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_client_main, args=(child,), daemon=True)
        self.process.start()
        child.close()

    def pool(self, key: str, names: Sequence[str]) -> None:
        self.conn.send(("pool", key, list(names)))

    def run(
        self,
        address: str,
        token: str | None,
        pool: str,
        names: str,
        concurrency: int,
        seconds: float,
        connections: int,
    ) -> dict[str, Any]:
        self.conn.send(("run", address, token, pool, names, concurrency, seconds, connections))
        if not self.conn.poll(seconds + 60):
            raise RuntimeError("the client process did not answer")
        result: dict[str, Any] = self.conn.recv()
        return result

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


@dataclass
class Target:
    label: str
    address: str
    token: str | None
    processes: ProcessSet
    database: ProcessSet | None = None


def measure_round(
    client: Client, target: Target, pool: str, names: str, c: int, s: float, connections: int
) -> Any:
    database = target.database or ProcessSet([])
    before, db_before = target.processes.snapshot(), database.snapshot()
    result = client.run(target.address, target.token, pool, names, c, s, connections)
    after, db_after = target.processes.snapshot(), database.snapshot()
    return result, ProcessSet.delta(before, after), ProcessSet.delta(db_before, db_after)


def interleaved(
    client: Client,
    targets: Sequence[Target],
    pool: str,
    names: str,
    concurrency: int,
    options: Options,
    rounds: int,
) -> list[Cell]:
    """Warm-up for each, then ``rounds`` rounds alternating which target goes first."""
    for target in targets:
        client.run(
            target.address,
            target.token,
            pool,
            names,
            concurrency,
            options.warmup_seconds,
            options.connections,
        )
    cells = [Cell() for _ in targets]
    for index in range(rounds):
        order = list(range(len(targets)))
        if index % 2:
            order.reverse()
        for i in order:
            result, ticks, db_ticks = measure_round(
                client,
                targets[i],
                pool,
                names,
                concurrency,
                options.round_seconds,
                options.connections,
            )
            cells[i].add(result, ticks, db_ticks)
    return cells


def worker_shares(
    client: Client, target: Target, workers: Sequence[int], options: Options
) -> list[float]:
    """Each worker's share of its server's CPU in one warm round at concurrency 16: how
    evenly the client's connections landed on the workers."""
    before = {pid: cpu_ticks(pid) or 0 for pid in workers}
    concurrency = max(c for c in options.concurrencies if c <= 16)
    client.run(
        target.address,
        target.token,
        "warm",
        "same",
        concurrency,
        options.round_seconds,
        options.connections,
    )
    spent = [(cpu_ticks(pid) or 0) - before[pid] for pid in workers]
    total = sum(spent)
    return [ticks / total if total else 0.0 for ticks in spent]


# ----------------------------------------------------------------------- database


def _sealed_rows(
    envelope: Envelope, names: Sequence[str], value_size: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """``secrets`` rows and their version-1 ``secret_versions`` rows (sealed under the
    vault's key, fingerprinted as the vault does, so it has nothing to backfill)."""
    secrets, versions = [], []
    now = datetime.now(UTC)
    fingerprinter = Fingerprinter(envelope.keyring)
    for name in names:
        secret_id = uuid.uuid4()
        value = ("sk_" + os.urandom(value_size).hex())[:value_size].encode()
        sealed = envelope.seal(value, SecretContext(str(secret_id), name, 1))
        key_id, fingerprint = fingerprinter.fingerprint(value)
        secrets.append((secret_id, name, "", 1, uuid.uuid4().hex, now, now))
        versions.append(
            (
                secret_id,
                1,
                now,
                "bench",
                sealed.key_id,
                sealed.wrapped_dek,
                sealed.ciphertext,
                fingerprint,
                key_id,
            )
        )
    return secrets, versions


async def seed(url: str, envelope: Envelope, names: Sequence[str], value_size: int) -> float:
    """Migrate, then COPY sealed rows in (triggers off: no vault is running yet, and a
    million change notifications would only fill the queue). Returns the seconds taken."""
    started = time.perf_counter()
    conn = await asyncpg.connect(url, timeout=30)
    try:
        await migrate(conn)
        await conn.execute("SET session_replication_role = replica")
        chunk = 50_000
        for start in range(0, len(names), chunk):
            secrets, versions = await asyncio.to_thread(
                _sealed_rows, envelope, names[start : start + chunk], value_size
            )
            await conn.copy_records_to_table(
                "secrets",
                records=secrets,
                columns=[
                    "id",
                    "name",
                    "description",
                    "current_version",
                    "etag",
                    "create_time",
                    "update_time",
                ],
                timeout=3600,
            )
            await conn.copy_records_to_table(
                "secret_versions",
                records=versions,
                columns=[
                    "secret_id",
                    "version",
                    "create_time",
                    "created_by",
                    "kek_id",
                    "wrapped_dek",
                    "ciphertext",
                    "fingerprint",
                    "fingerprint_key_id",
                ],
                timeout=3600,
            )
        await conn.execute("SET session_replication_role = DEFAULT")
        await conn.execute(
            "UPDATE vault_state SET total_secrets = $1, last_update_time = now()", len(names)
        )
        await conn.execute("ANALYZE secrets", timeout=3600)
        await conn.execute("ANALYZE secret_versions", timeout=3600)
    finally:
        await conn.close()
    return time.perf_counter() - started


async def commit_latency(url: str, count: int) -> dict[str, float]:
    """``count`` single-row INSERTs on one connection, each its own (durable) transaction."""
    conn = await asyncpg.connect(url, timeout=30)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_commit (id bigint, t timestamptz)")
        setting = await conn.fetchval("SHOW synchronous_commit")
        fsync = await conn.fetchval("SHOW fsync")
        samples = []
        for i in range(count):
            started = time.perf_counter()
            await conn.execute("INSERT INTO bench_commit VALUES ($1, now())", i)
            samples.append((time.perf_counter() - started) * 1000)
        await conn.execute("DROP TABLE bench_commit")
    finally:
        await conn.close()
    samples.sort()
    return {
        "p50": samples[len(samples) // 2],
        "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "mean": statistics.fmean(samples),
        "synchronous_commit": setting,
        "fsync": fsync,
    }


async def sql_value(url: str, query: str) -> Any:
    """Run ``query`` on a connection of its own; its first value (None for a command)."""
    conn = await asyncpg.connect(url, timeout=30)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def floor_events(url: str) -> int:
    query = "SELECT count(*) FROM audit_events WHERE principal = 'bench-resolver'"
    return int(await sql_value(url, query))


async def set_shared_buffers(pg: EmbeddedPostgres, size: str) -> str:
    """``ALTER SYSTEM SET shared_buffers`` and a restart; returns the setting now in force."""
    await sql_value(pg.uri("postgres"), f"ALTER SYSTEM SET shared_buffers = '{size}'")
    await asyncio.to_thread(pg.stop)
    await asyncio.to_thread(pg.start)
    return str(await sql_value(pg.uri("postgres"), "SHOW shared_buffers"))


async def create_db(pg: EmbeddedPostgres, name: str) -> str:
    await sql_value(pg.uri("postgres"), f'CREATE DATABASE "{name}"')
    return pg.uri(name)


# -------------------------------------------------------------------------- vault


async def start_vault(
    url: str, keys: str, token_spec: str, workers: int, cache: int, log: Path
) -> ServeProcess:
    env = cli_env(
        url,
        keys,
        VAULT_TOKENS=token_spec,
        VAULT_WORKERS=str(workers),
        VAULT_CACHE_MAX_ENTRIES=str(cache),
    )
    return await start_serve(env, log, timeout=120)


def vault_target(label: str, server: ServeProcess, token: str, postmaster: int) -> Target:
    """The vault's supervisor and workers; and every process of its Postgres."""
    assert server.proc.pid is not None
    return Target(
        label,
        server.address,
        token,
        ProcessSet([], [server.proc.pid]),
        ProcessSet([], [postmaster]),
    )


def vault_workers(server: ServeProcess) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    assert server.proc.pid is not None
    workers = []
    for pid in children(server.proc.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command and b"resource_tracker" not in command:
            workers.append(pid)
    return workers


# ------------------------------------------------------------------------- report


@dataclass
class Results:
    options: Options
    main: dict[tuple[str, int], tuple[Cell, Cell]] = field(default_factory=dict)
    floor: dict[tuple[str, int], Cell] = field(default_factory=dict)
    """The durable-audit floor (echo + one group-committed audit event per call) per cell."""
    floor_events: int = 0
    """Audit events the floor committed (warm-up rounds included)."""
    shared_buffers: str = "128MB"
    """The bench Postgres's ``shared_buffers``."""
    shares: dict[str, list[float]] = field(default_factory=dict)
    """Per server, each worker's share of its CPU in one warm round (:func:`worker_shares`)."""
    scale: dict[int, tuple[Cell, Cell]] = field(default_factory=dict)
    rss_mib: list[float] = field(default_factory=list)
    commit: dict[str, Any] = field(default_factory=dict)
    seed_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def errors(self) -> list[str]:
        lines = []
        for (scenario, c), cells in self.main.items():
            floor = self.floor.get((scenario, c), Cell())
            for label, cell in zip(("echo", "vault", "echo+audit"), (*cells, floor), strict=True):
                if cell.errors:
                    lines.append(f"{scenario} c={c} {label}: {cell.errors}")
        for c, cells in self.scale.items():
            for label, cell in zip(("1k", "1M"), cells, strict=True):
                if cell.errors:
                    lines.append(f"scale c={c} {label}: {cell.errors}")
        return lines

    def text(self) -> str:
        o = self.options
        head = (
            f"{'scenario':<8} {'c':>3} | {'echo QPS':>9} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'CPU us':>7} | {'vault QPS':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU us':>7} "
            f"{'(PG)':>6} | "
            f"{'QPS x':>6} {'p50 x':>6} {'p99 x':>6} {'CPU x':>6}"
        )
        lines = [
            f"ResolveTemplate (5 secrets, seed-shaped template) vs an echo ResolverService; "
            f"{o.workers} server workers each, client in 1 separate process with up to "
            f"{o.connections} connections, "
            f"{o.rounds} interleaved rounds x {o.round_seconds:g} s per cell; cold = 5 of "
            f"{o.cold_pool:,} secrets at random, cache {o.cache_entries:,} entries",
            "",
            head,
            "-" * len(head),
        ]
        for (scenario, c), (echo, vault) in self.main.items():
            lines.append(
                f"{scenario:<8} {c:>3} | {echo.qps:>9.0f} {echo.p50:>7.2f} {echo.p99:>7.2f} "
                f"{echo.cpu_us:>7.0f} | {vault.qps:>9.0f} {vault.p50:>7.2f} {vault.p99:>7.2f} "
                f"{vault.cpu_us:>7.0f} {vault.db_us:>6.0f} | {ratio(vault.qps, echo.qps):>6.2f} "
                f"{ratio(vault.p50, echo.p50):>6.2f} {ratio(vault.p99, echo.p99):>6.2f} "
                f"{ratio(vault.cpu_us, echo.cpu_us):>6.2f}"
            )
        lines += [
            "",
            "x = vault / echo. CPU us = server CPU per call (utime+stime from /proc): echo "
            "workers; vault supervisor + workers + every Postgres process ((PG): the "
            "Postgres part).",
            "",
            "durable-audit floor: echo+audit = the echo that, before each reply, commits one "
            "audit event through the vault's group commit (no auth, cache, crypto or "
            "templates); its CPU includes every Postgres process, like the vault's.",
            *self.floor_lines(),
            "",
            "server CPU per worker in one warm round (how the client's connections spread "
            "over the workers): "
            + "; ".join(
                f"{label} " + " / ".join(f"{share:.0%}" for share in shares)
                for label, shares in self.shares.items()
            ),
            "",
            f"database commit latency (single-row INSERT, own transaction, {o.commits} times): "
            f"p50 {self.commit['p50']:.3f} ms, p99 {self.commit['p99']:.3f} ms, mean "
            f"{self.commit['mean']:.3f} ms (synchronous_commit={self.commit['synchronous_commit']}"
            f", fsync={self.commit['fsync']})",
            "",
            f"cold resolve at {o.small:,} vs {o.big:,} secrets (cache {o.scale_cache_entries} "
            f"entries, interleaved, {o.scale_rounds} rounds x {o.round_seconds:g} s, one "
            f"connection; Postgres shared_buffers {self.shared_buffers}):",
        ]
        for c, (small, big) in self.scale.items():
            lines.append(
                f"  c={c:<3} p50 {small.p50:.2f} ms vs {big.p50:.2f} ms "
                f"({(ratio(big.p50, small.p50) - 1) * 100:+.1f}%); QPS {small.qps:.0f} vs "
                f"{big.qps:.0f}"
            )
        lines.append(
            f"resident memory per vault worker at {o.big:,} secrets after the cold run: "
            + ", ".join(f"{m:.0f} MiB" for m in self.rss_mib)
        )
        errors = self.errors()
        lines.append("errors: " + ("; ".join(errors) if errors else "none"))
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        lines.append(
            f"machine: {os.cpu_count()} CPUs, load average {load}; measured in "
            f"{self.seconds:.0f} s (seeding: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in self.seed_seconds.items())
            + ")"
        )
        lines += ["", self.markdown()]
        return "\n".join(lines)

    def floor_rows(self) -> list[tuple[str, int, Cell, Cell, Cell]]:
        return [
            (scenario, c, echo, self.floor[(scenario, c)], vault)
            for (scenario, c), (echo, vault) in self.main.items()
            if (scenario, c) in self.floor
        ]

    def floor_lines(self) -> list[str]:
        head = (
            f"{'scenario':<8} {'c':>3} | {'QPS':>7} {'p99 ms':>7} {'CPU us':>7} {'(PG)':>6} | "
            f"{'floor/echo: QPS x':>17} {'p99 x':>6} {'CPU x':>6} | "
            f"{'vault/floor: QPS x':>18} {'p99 x':>6} {'CPU x':>6}"
        )
        lines = [head, "-" * len(head)]
        for scenario, c, echo, floor, vault in self.floor_rows():
            lines.append(
                f"{scenario:<8} {c:>3} | {floor.qps:>7.0f} {floor.p99:>7.2f} "
                f"{floor.cpu_us:>7.0f} {floor.db_us:>6.0f} | "
                f"{ratio(floor.qps, echo.qps):>17.2f} {ratio(floor.p99, echo.p99):>6.2f} "
                f"{ratio(floor.cpu_us, echo.cpu_us):>6.2f} | "
                f"{ratio(vault.qps, floor.qps):>18.2f} {ratio(vault.p99, floor.p99):>6.2f} "
                f"{ratio(vault.cpu_us, floor.cpu_us):>6.2f}"
            )
        return lines

    def markdown(self) -> str:
        o = self.options
        rows = [
            "| requests | concurrency | echo QPS | vault QPS | QPS / echo "
            "| p50 ms echo / vault | p99 ms echo / vault | p99 / echo "
            "| CPU µs/call echo / vault (Postgres) | CPU / echo |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (scenario, c), (echo, vault) in self.main.items():
            rows.append(
                f"| {scenario} | {c} | {echo.qps:.0f} | {vault.qps:.0f} | "
                f"{ratio(vault.qps, echo.qps):.2f} | {echo.p50:.2f} / {vault.p50:.2f} | "
                f"{echo.p99:.2f} / {vault.p99:.2f} | {ratio(vault.p99, echo.p99):.2f} | "
                f"{echo.cpu_us:.0f} / {vault.cpu_us:.0f} ({vault.db_us:.0f}) | "
                f"{ratio(vault.cpu_us, echo.cpu_us):.2f} |"
            )
        rows += [
            "",
            "| requests | concurrency | echo+audit QPS | QPS / echo | p99 / echo "
            "| CPU µs/call (Postgres) | CPU / echo "
            "| vault QPS / echo+audit | vault CPU / echo+audit |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for scenario, c, echo, floor, vault in self.floor_rows():
            rows.append(
                f"| {scenario} | {c} | {floor.qps:.0f} | {ratio(floor.qps, echo.qps):.2f} | "
                f"{ratio(floor.p99, echo.p99):.2f} | {floor.cpu_us:.0f} ({floor.db_us:.0f}) | "
                f"{ratio(floor.cpu_us, echo.cpu_us):.2f} | {ratio(vault.qps, floor.qps):.2f} | "
                f"{ratio(vault.cpu_us, floor.cpu_us):.2f} |"
            )
        rows += [
            "",
            f"| cold resolve | {o.small:,} secrets | {o.big:,} secrets | change |",
            "|---|---|---|---|",
        ]
        for c, (small, big) in self.scale.items():
            rows.append(
                f"| p50, concurrency {c} | {small.p50:.2f} ms | {big.p50:.2f} ms | "
                f"{(ratio(big.p50, small.p50) - 1) * 100:+.1f}% |"
            )
        rows.append(
            f"| RSS per worker at {o.big:,} | | "
            + " / ".join(f"{m:.0f} MiB" for m in self.rss_mib)
            + " | |"
        )
        rows.append(
            f"\nCommit latency: p50 {self.commit['p50']:.2f} ms, p99 {self.commit['p99']:.2f} ms."
        )
        return "\n".join(rows)


# --------------------------------------------------------------------------- main


async def run_bench(options: Options) -> Results:
    started = time.perf_counter()
    results = Results(options)
    pg = await asyncio.to_thread(start_embedded, "vaultsvc-bench-")
    workdir = Path(tempfile.mkdtemp(prefix="vaultsvc-bench-logs-"))
    echo: EchoServer | None = None
    floor: EchoServer | None = None
    client: Client | None = None
    vaults: list[ServeProcess] = []
    try:
        if options.shared_buffers is not None:
            results.shared_buffers = await set_shared_buffers(pg, options.shared_buffers)
        key_id, key = generate_master_key()
        keys = f"{key_id}:{key}"
        envelope = Envelope(parse_master_keys(keys))
        tokens = {ADMIN: new_token(), RESOLVER: new_token()}
        spec = ",".join(f"bench-{r}:{r}:{hash_token(t).hex()}" for r, t in tokens.items())

        cold_names = [f"cold_{i:07d}" for i in range(options.cold_pool)]
        small_names = [f"s_{i:07d}" for i in range(options.small)]
        big_names = [f"s_{i:07d}" for i in range(options.big)]
        main_url = await create_db(pg, "bench_main")
        small_url = await create_db(pg, "bench_small")
        big_url = await create_db(pg, "bench_big")
        postmaster = await postmaster_pid(main_url)
        results.seed_seconds["main"] = await seed(
            main_url, envelope, [*WARM_NAMES, *cold_names], options.value_size
        )
        results.seed_seconds["small"] = await seed(
            small_url, envelope, small_names, options.value_size
        )
        results.seed_seconds["big"] = await seed(big_url, envelope, big_names, options.value_size)

        echo = await asyncio.to_thread(EchoServer, options.workers)
        floor = await asyncio.to_thread(EchoServer, options.workers, main_url)
        client = Client()
        client.pool("warm", WARM_NAMES)
        client.pool("cold", cold_names)
        client.pool("small", small_names)
        client.pool("big", big_names)

        vault = await start_vault(
            main_url, keys, spec, options.workers, options.cache_entries, workdir / "main.log"
        )
        vaults.append(vault)
        targets = [
            Target("echo", echo.address, None, ProcessSet(echo.pids)),
            Target(
                "echo+audit",
                floor.address,
                None,
                ProcessSet(floor.pids),
                ProcessSet([], [postmaster]),
            ),
            vault_target("vault", vault, tokens[RESOLVER], postmaster),
        ]
        for scenario, pool, names in (("warm", "warm", "same"), ("cold", "cold", "random")):
            for c in options.concurrencies:
                cells = await asyncio.to_thread(
                    interleaved, client, targets, pool, names, c, options, options.rounds
                )
                results.main[(scenario, c)] = (cells[0], cells[2])
                results.floor[(scenario, c)] = cells[1]
        for target, workers in zip(
            targets, (echo.pids, floor.pids, vault_workers(vault)), strict=True
        ):
            results.shares[target.label] = await asyncio.to_thread(
                worker_shares, client, target, workers, options
            )
        results.floor_events = await floor_events(main_url)
        results.commit = await commit_latency(main_url, options.commits)
        await vault.stop()
        vaults.remove(vault)

        small_vault = await start_vault(
            small_url,
            keys,
            spec,
            options.workers,
            options.scale_cache_entries,
            workdir / "small.log",
        )
        vaults.append(small_vault)
        big_vault = await start_vault(
            big_url,
            keys,
            spec,
            options.workers,
            options.scale_cache_entries,
            workdir / "big.log",
        )
        vaults.append(big_vault)
        scale_targets = [  # latency only: the two share one Postgres
            vault_target("1k", small_vault, tokens[RESOLVER], postmaster),
            vault_target("1M", big_vault, tokens[RESOLVER], postmaster),
        ]
        for c in options.scale_concurrencies:
            small_cell = Cell()
            big_cell = Cell()
            for _ in range(options.scale_rounds):
                # Each vault gets its own pool of names; the two alternate.
                for target, pool, cell in (
                    (scale_targets[0], "small", small_cell),
                    (scale_targets[1], "big", big_cell),
                ):
                    result = await asyncio.to_thread(
                        client.run,
                        target.address,
                        target.token,
                        pool,
                        "random",
                        c,
                        options.round_seconds,
                        1,  # one worker of each: the same conditions for both sizes
                    )
                    cell.add(result, 0)
            results.scale[c] = (small_cell, big_cell)
        results.rss_mib = [rss_kib(pid) / 1024 for pid in vault_workers(big_vault)]
        results.seconds = time.perf_counter() - started
        return results
    finally:
        for server in vaults:
            try:
                await server.stop()
            except Exception:
                server.proc.kill()
        if client is not None:
            client.close()
        for echo_server in (echo, floor):
            if echo_server is not None:
                echo_server.stop()
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(pg.data_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def parse(argv: Sequence[str] | None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: small pools, short")
    parser.add_argument("--workers", type=int, default=2, help="server workers (each side)")
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.workers <= 16:
        parser.error("--workers is 1..16")
    options = Options.quick(args.workers) if args.quick else Options(workers=args.workers)
    return options, args.json


def main(argv: Sequence[str] | None = None) -> int:
    options, as_json = parse(argv)
    results = asyncio.run(run_bench(options))
    print(results.text())
    if as_json:
        print(json.dumps(summary(results), indent=1))
    return 0


def summary(results: Results) -> dict[str, Any]:
    def cell(c: Cell) -> dict[str, Any]:
        return {
            "qps": round(c.qps, 1),
            "p50_ms": c.p50,
            "p99_ms": c.p99,
            "cpu_us_per_call": round(c.cpu_us, 1),
            "postgres_cpu_us_per_call": round(c.db_us, 1),
            "ok": c.ok,
            "failed": c.failed,
        }

    return {
        "main": [
            {
                "scenario": s,
                "concurrency": c,
                "echo": cell(e),
                "vault": cell(v),
                "echo_audit": cell(results.floor[(s, c)]),
            }
            for (s, c), (e, v) in results.main.items()
        ],
        "scale": [
            {"concurrency": c, "small": cell(a), "big": cell(b)}
            for c, (a, b) in results.scale.items()
        ],
        "rss_mib": results.rss_mib,
        "worker_cpu_shares": results.shares,
        "commit_ms": results.commit,
    }


if __name__ == "__main__":
    random.seed()
    sys.exit(main())
