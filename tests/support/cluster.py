"""A production-shaped cluster on one machine, from Debian's packages (``make cluster-deps``):

    clients ──h2c──▶ haproxy ──h2c──▶ 3 x ``python -m vaultsvc serve``
                                           │  pool, audit: VAULT_DATABASE_URL
                                           ▼
                                     pgbouncer (pool_mode = transaction)
                                           │
                                           ▼
                      PostgreSQL 15 (Debian's) ◀── LISTEN: VAULT_DATABASE_DIRECT_URL

No port is probed: Postgres, pgbouncer and haproxy's front end listen on Unix sockets in
private directories (nothing else can take them), the replicas bind port 0 and report the
port they got, and haproxy's configuration is written once they have. Postgres and
pgbouncer run as the ``postgres`` system user when the tests run as root (both refuse
root). pgbouncer is stock: no ``ignore_startup_parameters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from tests.support.cli import ServeProcess, cli_env, start_serve
from vaultsvc.auth import ADMIN, RESOLVER, VIEWER, hash_token, new_token
from vaultsvc.crypto import generate_master_key

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PGBOUNCER = Path("/usr/sbin/pgbouncer")
HAPROXY = Path("/usr/sbin/haproxy")
#: Socket file numbers; each server has its own private directory, so they cannot clash.
PG_PORT = 5432
PGBOUNCER_PORT = 6432
#: Server connections pgbouncer opens to Postgres for the vault (3 replicas share them).
POOL_SIZE = 4
REPLICAS = 3


def require_packages() -> None:
    missing = [str(p) for p in (PG_BIN / "postgres", PGBOUNCER, HAPROXY) if not p.exists()]
    if missing:
        raise AssertionError(
            f"cluster test needs Debian's postgresql-15, pgbouncer and haproxy; missing "
            f"{', '.join(missing)}: run `make cluster-deps` (as root)"
        )


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run Postgres and pgbouncer under: ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def _url(user: str, password: str, socket_dir: Path, port: int, db: str) -> str:
    return f"postgresql://{user}:{password}@/{db}?host={socket_dir}&port={port}"


@dataclass
class Daemon:
    """A foreground server process with its output in a log file."""

    name: str
    argv: list[str]
    log: Path
    owner: tuple[int, int] | None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                user=None if self.owner is None else self.owner[0],
                group=None if self.owner is None else self.owner[1],
                start_new_session=True,
            )

    def check_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"{self.name} is not running:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Signal the process (Postgres: SIGINT = fast shutdown) and wait for it to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Cluster:
    base: Path
    postgres: Daemon
    pgbouncer: Daemon
    haproxy: Daemon | None
    direct_url: str
    """The vault's role, straight to Postgres."""
    pooled_url: str
    """The vault's role, through pgbouncer."""
    superuser_url: str
    balancer: str
    """gRPC target of haproxy's front end (a Unix socket)."""
    haproxy_stats: Path
    tokens: dict[str, str]
    replicas: list[ServeProcess] = field(default_factory=list)

    async def wait_postgres(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.postgres.check_running()
            try:
                conn = await asyncpg.connect(self.superuser_url, timeout=2)
            except (OSError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"Postgres 15 did not start:\n{self.postgres.output()}"
                    ) from None
                await asyncio.sleep(0.1)
                continue
            await conn.close()
            return

    async def restart_postgres(self, down_for: float) -> None:
        """Fast shutdown, ``down_for`` seconds down, start again on the same socket."""
        await asyncio.to_thread(self.postgres.stop, signal.SIGINT)
        await asyncio.sleep(down_for)
        self.postgres.start()
        await self.wait_postgres()

    async def superuser_sql(self, query: str, *args: Any) -> list[Any]:
        conn = await asyncpg.connect(self.superuser_url, timeout=10)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    def served_by_replica(self) -> dict[str, int]:
        """Requests haproxy sent to each replica (``stot`` of ``show stat``)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.haproxy_stats))
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        return {
            row["svname"]: int(row["stot"] or 0)
            for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == "vaults" and row["svname"].startswith("r")
        }


def _write(path: Path, text: str, owner: tuple[int, int] | None, mode: int = 0o600) -> None:
    path.write_text(text)
    path.chmod(mode)
    if owner is not None:
        os.chown(path, *owner)


def _mkdir(path: Path, owner: tuple[int, int] | None) -> None:
    path.mkdir(mode=0o700)
    if owner is not None:
        os.chown(path, *owner)


def _initdb(data: Path, pwfile: Path, owner: tuple[int, int] | None) -> None:
    done = subprocess.run(
        [
            str(PG_BIN / "initdb"),
            "-D", str(data),
            "-U", "postgres",
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E", "UTF8",
            "--no-sync",
            "--no-instructions",
        ],
        capture_output=True,
        user=None if owner is None else owner[0],
        group=None if owner is None else owner[1],
        timeout=120,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"initdb failed: {done.stdout.decode()} {done.stderr.decode()}")


def _pgbouncer_ini(base: Path, pg_sock: Path, pgb_sock: Path) -> str:
    return f"""\
[databases]
vault = host={pg_sock} port={PG_PORT} dbname=vault

[pgbouncer]
unix_socket_dir = {pgb_sock}
listen_port = {PGBOUNCER_PORT}
auth_type = scram-sha-256
auth_file = {base / "userlist.txt"}
pool_mode = transaction
default_pool_size = {POOL_SIZE}
max_client_conn = 500
; A client waiting for a server connection while Postgres is down gets an error after
; this long (the vault then answers UNAVAILABLE) instead of pgbouncer's 120 s default.
query_wait_timeout = 5
server_connect_timeout = 2
server_login_retry = 1
"""


def _haproxy_cfg(front: Path, stats: Path, replicas: list[ServeProcess]) -> str:
    servers = "\n".join(
        f"    server r{i} {r.address} proto h2 check inter 200ms fall 1 rise 2"
        for i, r in enumerate(replicas)
    )
    return f"""\
global
    maxconn 2000
    stats socket {stats} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # A request whose connection to a replica fails is sent to another one.
    retries 3
    option redispatch 1

frontend grpc
    bind unix@{front} proto h2
    default_backend vaults

backend vaults
    balance roundrobin
{servers}
"""


async def _wait_for_socket(daemon: Daemon, path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(path.exists):
        daemon.check_running()
        if time.monotonic() > deadline:
            raise AssertionError(f"{daemon.name} did not start:\n{daemon.output()}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_cluster(
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Cluster]:
    """Start Postgres 15, pgbouncer, the replicas and haproxy; stop all of them after."""
    require_packages()
    owner = _run_as()
    base = Path(tempfile.mkdtemp(prefix="vault-cluster-"))
    pg_sock, pgb_sock, front_dir, logs = base / "pg", base / "pgb", base / "lb", base / "logs"
    data = base / "data"
    super_pw, vault_pw = secrets.token_hex(16), secrets.token_hex(16)

    def lay_out() -> None:
        base.chmod(0o711)
        for folder in (pg_sock, pgb_sock, logs, data):
            _mkdir(folder, owner)
        front_dir.mkdir(mode=0o700)
        _write(base / "pw", super_pw, owner)
        _write(base / "userlist.txt", f'"vault" "{vault_pw}"\n', owner)
        _write(base / "pgbouncer.ini", _pgbouncer_ini(base, pg_sock, pgb_sock), owner)
        try:
            _initdb(data, base / "pw", owner)
        finally:
            (base / "pw").unlink()

    try:
        await asyncio.to_thread(lay_out)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise

    postgres = Daemon(
        "postgres",
        [
            str(PG_BIN / "postgres"),
            "-D", str(data),
            "-k", str(pg_sock),
            "-p", str(PG_PORT),
            "-c", "listen_addresses=",
            "-c", "fsync=off",
            "-c", "max_connections=100",
        ],
        logs / "postgres.log",
        owner,
    )  # fmt: skip
    pgbouncer = Daemon(
        "pgbouncer", [str(PGBOUNCER), str(base / "pgbouncer.ini")], logs / "pgbouncer.log", owner
    )
    tokens = {role: new_token() for role in (ADMIN, VIEWER, RESOLVER)}
    cluster = Cluster(
        base=base,
        postgres=postgres,
        pgbouncer=pgbouncer,
        haproxy=None,
        direct_url=_url("vault", vault_pw, pg_sock, PG_PORT, "vault"),
        pooled_url=_url("vault", vault_pw, pgb_sock, PGBOUNCER_PORT, "vault"),
        superuser_url=_url("postgres", super_pw, pg_sock, PG_PORT, "postgres"),
        balancer=f"unix:{front_dir / 'grpc.sock'}",
        haproxy_stats=front_dir / "stats.sock",
        tokens=tokens,
    )
    try:
        postgres.start()
        await cluster.wait_postgres()
        # The vault's own role owns its database (no superuser: pg_trgm is a trusted
        # extension, created by the first migration).
        await cluster.superuser_sql(f"CREATE ROLE vault LOGIN PASSWORD '{vault_pw}'")
        await cluster.superuser_sql("CREATE DATABASE vault OWNER vault")
        pgbouncer.start()
        await _wait_for_socket(pgbouncer, pgb_sock / f".s.PGSQL.{PGBOUNCER_PORT}")

        key_id, key = generate_master_key()
        spec = ",".join(f"cluster-{r}:{r}:{hash_token(t).hex()}" for r, t in tokens.items())
        env = cli_env(
            cluster.pooled_url,
            f"{key_id}:{key}",
            VAULT_TOKENS=spec,
            VAULT_DATABASE_POOLER="transaction",
            VAULT_DATABASE_DIRECT_URL=cluster.direct_url,
            VAULT_DATABASE_POOL_MIN_SIZE="4",
            VAULT_SERVER_SHUTDOWN_DELAY="0.2",
            **(extra_env or {}),
        )
        # Started together: migrations run once, under their advisory lock, on PG 15.
        cluster.replicas = list(
            await asyncio.gather(
                *(start_serve(env, base / f"replica{i}.log") for i in range(REPLICAS))
            )
        )
        _write(
            base / "haproxy.cfg",
            _haproxy_cfg(front_dir / "grpc.sock", cluster.haproxy_stats, cluster.replicas),
            None,
        )
        cluster.haproxy = Daemon(
            "haproxy", [str(HAPROXY), "-f", str(base / "haproxy.cfg"), "-db"],
            base / "haproxy.log", None,
        )  # fmt: skip
        cluster.haproxy.start()
        await _wait_for_socket(cluster.haproxy, front_dir / "grpc.sock")
        await _wait_for_socket(cluster.haproxy, cluster.haproxy_stats)
        yield cluster
    finally:
        await asyncio.gather(
            *(r.stop(timeout=15) for r in cluster.replicas if r.proc.returncode is None),
            return_exceptions=True,
        )
        for daemon in (cluster.haproxy, pgbouncer):
            if daemon is not None:
                daemon.stop()
        postgres.stop(signal.SIGINT)
        shutil.rmtree(base, ignore_errors=True)
