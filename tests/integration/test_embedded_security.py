"""Issue 15 item 13: a local user cannot reach the master key through the embedded Postgres.

Every test starts the real vault with ``python -m vaultsvc serve`` (embedded Postgres,
``VAULT_MASTER_KEYS`` in its environment) and attacks it the way a local user would:
read the postmaster's environment, connect to its socket without a password, look for
world-writable socket directories and for directories the start-up opened up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg
import grpc
import pytest
from interakt.vault.v1 import secret_service_pb2 as pb
from interakt.vault.v1 import secret_service_pb2_grpc as pbg

from tests.support.cli import start_serve as support_start_serve
from tests.support.faults import child_pids
from vaultsvc.auth import hash_token, new_token
from vaultsvc.crypto import generate_master_key
from vaultsvc.storage import embedded

REPO = Path(__file__).resolve().parents[2]
#: Linux' sun_path is 108 bytes including the terminating NUL.
SUN_PATH_MAX = 107
CANARY = "UNRELATED_CANARY_SECRET"
#: The Postgres superuser's password file, in libpq's pgpass format, in the vault's data dir.
PASSFILE_NAME = "postgres.pgpass"
#: The OS user Postgres runs as when the vault runs as root (Postgres refuses root).
PG_OS_USER = "embedded_postgres"


_SERVE_COUNT = itertools.count()


@dataclass
class Serve:
    proc: asyncio.subprocess.Process
    address: str
    admin_token: str
    master_key: str
    creds: Creds
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@dataclass(frozen=True)
class Creds:
    master_keys: str
    token: str

    @classmethod
    def new(cls) -> Creds:
        key_id, key = generate_master_key()
        return cls(f"{key_id}:{key}", new_token())


async def start_serve(
    data_dir: Path, log_dir: Path, creds: Creds | None = None, command: str = "serve"
) -> Serve:
    creds = creds or Creds.new()
    key = creds.master_keys.partition(":")[2]
    env = {
        **os.environ,
        "VAULT_DATA_DIR": str(data_dir),
        "VAULT_LISTEN": "127.0.0.1:0",
        "VAULT_METRICS_LISTEN": "127.0.0.1:0",
        "VAULT_MASTER_KEYS": creds.master_keys,
        "VAULT_TOKENS": f"ops:admin:{hash_token(creds.token).hex()}",
        CANARY: "canary-value-that-must-not-reach-postgres",
    }
    env.pop("VAULT_DATABASE_URL", None)
    stderr_path = log_dir / f"{command}-{next(_SERVE_COUNT)}.log"
    started = await support_start_serve(env, stderr_path, timeout=90, command=command)
    return Serve(started.proc, started.address, creds.token, key, creds, stderr_path)


async def stop(serve: Serve) -> int:
    if serve.proc.returncode is None:
        serve.proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(serve.proc.wait(), timeout=60)


@pytest.fixture
def base() -> Iterator[Path]:
    """A 0700 directory of root's (mkdtemp), as pytest's tmp tree and $HOME would be."""
    path = Path(tempfile.mkdtemp(prefix="vaultsvc-embsec-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def running(base: Path) -> AsyncIterator[tuple[Serve, Path]]:
    data_dir = base / "vault-data"
    serve = await start_serve(data_dir, base)
    try:
        yield serve, data_dir
    finally:
        await stop(serve)


def postmaster_lines(data_dir: Path) -> list[str]:
    return (data_dir / "pg" / "postmaster.pid").read_text().splitlines()


def postmaster_pid(data_dir: Path) -> int:
    return int(postmaster_lines(data_dir)[0])


def socket_dir(data_dir: Path) -> Path:
    return Path(postmaster_lines(data_dir)[4])


def superuser_dsn(data_dir: Path, database: str = "vault") -> str:
    """What the vault itself uses: the socket plus the password file."""
    assert embedded.PASSWORD_FILE_NAME == PASSFILE_NAME
    return embedded.running_uri(data_dir, database)


def environ_names(raw: bytes) -> dict[str, bytes]:
    entries = [e for e in raw.split(b"\0") if e]
    return {e.partition(b"=")[0].decode(errors="replace"): e.partition(b"=")[2] for e in entries}


def read_environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def all_cmdlines() -> dict[str, bytes]:
    found = {}
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit():
            with contextlib.suppress(OSError):
                found[proc_dir.name] = (proc_dir / "cmdline").read_bytes()
    return found


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


#: What the vault passes (PATH, HOME, locale, TZ) plus what pg_ctl and /bin/sh add themselves.
ALLOWED_ENV = {
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ",
    "PGDATA", "PGSYSCONFDIR", "PGLOCALEDIR", "PG_GRANDPARENT_PID", "PWD",
}  # fmt: skip


def assert_clean_environment(raw: bytes, master_key: str) -> None:
    assert master_key.encode() not in raw, "the master key reached Postgres' environment"
    names = environ_names(raw)
    leaked = sorted(n for n in names if n.startswith("VAULT_") or n == CANARY)
    assert not leaked, f"vault environment reached Postgres: {leaked}"
    unexpected = sorted(n for n in names if n not in ALLOWED_ENV and not n.startswith("LC_"))
    assert not unexpected, f"not on the allow-list: {unexpected}"


async def test_postmaster_environment_is_scrubbed(running: tuple[Serve, Path]) -> None:
    serve, data_dir = running
    pid = postmaster_pid(data_dir)
    assert_clean_environment(read_environ(pid), serve.master_key)
    # Every Postgres process (backends, checkpointer, ...) inherits the postmaster's.
    children = child_pids(pid)
    assert children, "the postmaster has no child processes?"
    for child in children:
        assert serve.master_key.encode() not in read_environ(child)

    # The attack itself: a superuser session reads the postmaster's environment.
    conn = await asyncpg.connect(superuser_dsn(data_dir), timeout=10)
    try:
        raw = await conn.fetchval("SELECT pg_read_binary_file($1)", f"/proc/{pid}/environ")
        own = await conn.fetchval("SELECT pg_read_binary_file('/proc/self/environ')")
    finally:
        await conn.close()
    assert_clean_environment(bytes(raw), serve.master_key)
    assert serve.master_key.encode() not in bytes(own)


async def _assert_private_socket(data_dir: Path) -> None:
    pid = postmaster_pid(data_dir)
    sock_dir = socket_dir(data_dir)
    st = sock_dir.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700, f"{sock_dir} is {stat.S_IMODE(st.st_mode):o}"
    assert st.st_uid == uid_of(pid), "the socket directory belongs to the Postgres user"
    sock = sock_dir / ".s.PGSQL.5432"
    assert sock.is_socket()
    assert len(str(sock)) <= SUN_PATH_MAX
    # No directory on the way to the socket lets others replace it.
    for parent in sock_dir.parents:
        mode = parent.stat().st_mode
        if mode & stat.S_IWOTH:
            assert mode & stat.S_ISVTX, f"{parent} is world-writable without the sticky bit"
    # Postgres listens on nothing but that socket.
    lines = postmaster_lines(data_dir)
    assert lines[5] == "", f"Postgres listens on TCP {lines[5]!r}"


async def test_socket_lives_in_a_private_directory(running: tuple[Serve, Path]) -> None:
    _, data_dir = running
    await _assert_private_socket(data_dir)


async def test_long_data_dir_path_keeps_the_socket_private(base: Path) -> None:
    data_dir = base / ("d" * 60) / ("e" * 60) / "vault-data"
    assert len(str(data_dir / "pg" / ".s.PGSQL.5432")) > SUN_PATH_MAX
    serve = await start_serve(data_dir, base)
    try:
        await _assert_private_socket(data_dir)
        async with grpc.aio.insecure_channel(serve.address) as channel:
            stub = pbg.SecretServiceStub(channel)
            md = [("authorization", f"Bearer {serve.admin_token}")]
            await stub.CreateSecret(pb.CreateSecretRequest(name="deep", value="v"), metadata=md)
            got = await stub.GetSecret(pb.GetSecretRequest(name="deep"), metadata=md)
            assert got.name == "deep"
    finally:
        assert await stop(serve) == 0


async def _refused(dsn: str, **kwargs: object) -> BaseException:
    with pytest.raises(
        (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError)
    ) as caught:
        conn = await asyncpg.connect(dsn, timeout=10, **kwargs)  # type: ignore[arg-type]
        await conn.close()
    return caught.value


async def test_connections_without_the_password_are_refused(
    running: tuple[Serve, Path], base: Path
) -> None:
    _, data_dir = running
    host = quote(str(socket_dir(data_dir)))
    no_passfile = base / "no-such-passfile"
    for user in ("postgres", "root", "nobody"):
        await _refused(f"postgresql://{user}@/postgres?host={host}", passfile=str(no_passfile))
    await _refused(f"postgresql://postgres@/vault?host={host}", password="guess")

    hba = (data_dir / "pg" / "pg_hba.conf").read_text()
    rules = [ln.split() for ln in hba.splitlines() if ln.strip() and not ln.startswith("#")]
    assert rules, "pg_hba.conf has no rules"
    assert all(rule[-1] in {"scram-sha-256", "reject"} for rule in rules), rules

    passfile = data_dir / PASSFILE_NAME
    st = passfile.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    # The password file is what works: the vault's own DSN connects.
    conn = await asyncpg.connect(superuser_dsn(data_dir), timeout=10)
    try:
        assert await conn.fetchval("SELECT current_setting('password_encryption')") == (
            "scram-sha-256"
        )
        assert await conn.fetchval("SELECT current_setting('listen_addresses')") == ""
    finally:
        await conn.close()


async def test_password_never_in_argv_or_log(running: tuple[Serve, Path]) -> None:
    serve, data_dir = running
    line = (data_dir / PASSFILE_NAME).read_text().strip()
    password = line.rsplit(":", 1)[1]
    assert len(password) >= 32
    pid = postmaster_pid(data_dir)
    for other, cmdline in all_cmdlines().items():
        assert password.encode() not in cmdline, f"password in argv of pid {other}"
    assert password not in serve.stderr()
    pg_log = b"".join(p.read_bytes() for p in (data_dir / "pg").glob("log*") if p.is_file())
    assert password.encode() not in pg_log
    assert pid > 0


def tree_state(paths: list[Path]) -> dict[str, tuple[int, int, int, bytes | None]]:
    state: dict[str, tuple[int, int, int, bytes | None]] = {}
    for path in paths:
        st = path.stat()
        try:
            acl: bytes | None = os.getxattr(path, "system.posix_acl_access")
        except OSError:
            acl = None
        state[str(path)] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, acl)
    return state


async def test_data_dir_and_parents_are_not_opened_up(base: Path) -> None:
    middle = base / "middle"
    middle.mkdir(mode=0o750)
    os.chmod(middle, 0o750)
    data_dir = middle / "vault-data"
    before = tree_state([middle, *middle.parents])
    assert before[str(base)][0] == 0o700

    serve = await start_serve(data_dir, base)
    try:
        after = tree_state([middle, *middle.parents])
        assert after == before, "start-up changed a parent of the data directory"
        # What the vault created itself is private.
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        pgdata = data_dir / "pg"
        assert stat.S_IMODE(pgdata.stat().st_mode) == 0o700
        if os.geteuid() == 0:
            owner = pwd.getpwuid(pgdata.stat().st_uid).pw_name
            assert owner != "root", "Postgres refuses to run as root"
            assert uid_of(postmaster_pid(data_dir)) == pgdata.stat().st_uid
        # A second start on the existing data dir changes nothing either.
        assert await stop(serve) == 0
        state_data = tree_state([data_dir, pgdata])
        serve = await start_serve(data_dir, base, serve.creds)
        assert tree_state([middle, *middle.parents]) == before
        assert tree_state([data_dir, pgdata]) == state_data
    finally:
        await stop(serve)


async def test_existing_data_dir_keeps_its_mode(base: Path) -> None:
    data_dir = base / "vault-data"
    data_dir.mkdir(mode=0o750)
    os.chmod(data_dir, 0o750)
    before = tree_state([data_dir, *data_dir.parents])
    serve = await start_serve(data_dir, base)
    try:
        assert tree_state([data_dir, *data_dir.parents]) == before
    finally:
        assert await stop(serve) == 0


async def test_serve_warns_that_embedded_postgres_is_for_development(
    running: tuple[Serve, Path],
) -> None:
    serve, _ = running
    warnings = []
    for line in serve.stderr().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("level") == "WARNING" and "embedded" in record.get("msg", "").lower():
            warnings.append(record["msg"])
    assert warnings, serve.stderr()
    assert any("development" in w and "VAULT_DATABASE_URL" in w for w in warnings), warnings


def _old_style_cluster(pgdata: Path) -> None:
    """What the previous releases left behind: initdb with trust for every connection."""
    pgdata.mkdir(parents=True)
    user = None
    if os.geteuid() == 0:
        user = PG_OS_USER
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "-s", "/bin/bash", user], check=True)
            entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    os.chmod(pgdata, 0o700)
    initdb = embedded.postgres_bin("initdb")
    subprocess.run(
        [str(initdb), "-D", "/proc/self/cwd", "--auth=trust", "--auth-local=trust",
         "--encoding=utf8", "-U", "postgres"],
        cwd=pgdata, user=user, check=True, capture_output=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )  # fmt: skip


async def test_restart_on_an_old_trust_data_dir_migrates_its_authentication(
    base: Path,
) -> None:
    data_dir = base / "vault-data"
    data_dir.mkdir(mode=0o700)
    _old_style_cluster(data_dir / "pg")
    assert "trust" in (data_dir / "pg" / "pg_hba.conf").read_text()

    serve = await start_serve(data_dir, base)
    try:
        async with grpc.aio.insecure_channel(serve.address) as channel:
            stub = pbg.SecretServiceStub(channel)
            md = [("authorization", f"Bearer {serve.admin_token}")]
            await stub.CreateSecret(pb.CreateSecretRequest(name="kept", value="v"), metadata=md)
        host = quote(str(socket_dir(data_dir)))
        await _refused(
            f"postgresql://postgres@/vault?host={host}", passfile=str(base / "no-passfile")
        )
        hba = (data_dir / "pg" / "pg_hba.conf").read_text()
        assert not [ln for ln in hba.splitlines() if "trust" in ln and not ln.startswith("#")]
    finally:
        assert await stop(serve) == 0
    # And the migrated data dir restarts normally, data intact.
    again = await start_serve(data_dir, base, serve.creds)
    try:
        async with grpc.aio.insecure_channel(again.address) as channel:
            stub = pbg.SecretServiceStub(channel)
            md = [("authorization", f"Bearer {again.admin_token}")]
            got = await stub.GetSecret(pb.GetSecretRequest(name="kept"), metadata=md)
            assert got.name == "kept"
    finally:
        assert await stop(again) == 0


async def test_dev_creates_a_private_data_dir_and_restarts_on_it(base: Path) -> None:
    data_dir = base / ".vault-data"
    before = tree_state([base, *base.parents])
    first = await start_serve(data_dir, base, command="dev")
    try:
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((data_dir / "dev-credentials.json").stat().st_mode) == 0o600
        assert tree_state([base, *base.parents]) == before
        assert_clean_environment(read_environ(postmaster_pid(data_dir)), first.master_key)
        creds = json.loads((data_dir / "dev-credentials.json").read_text())
        md = [("authorization", f"Bearer {creds['tokens']['admin']}")]
        async with grpc.aio.insecure_channel(first.address) as channel:
            stub = pbg.SecretServiceStub(channel)
            await stub.CreateSecret(pb.CreateSecretRequest(name="devkept", value="v"), metadata=md)
    finally:
        assert await stop(first) == 0
    again = await start_serve(data_dir, base, command="dev")
    try:
        async with grpc.aio.insecure_channel(again.address) as channel:
            stub = pbg.SecretServiceStub(channel)
            got = await stub.GetSecret(pb.GetSecretRequest(name="devkept"), metadata=md)
            assert got.name == "devkept"
    finally:
        assert await stop(again) == 0
