"""The server wheel installs into a fresh venv without the client distribution, and serves.

Builds the wheels of interakt-vault-api and vaultsvc from clean copies of their sources,
installs the server wheel alone into a new venv (no system site-packages; third-party
dependencies come from the pip cache or the package index), checks that `vaultsvc_client`
is not there, then runs `python -m vaultsvc serve` from that venv against its embedded
Postgres until the health check says SERVING, and stops it with SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vaultsvc.auth import hash_token, new_token
from vaultsvc.crypto import generate_master_key

REPO = Path(__file__).resolve().parents[2]
API = REPO / "api/python"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")

pytestmark = pytest.mark.slow


def version_of(pyproject: Path) -> str:
    return str(tomllib.loads(pyproject.read_text())["project"]["version"])


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """Outside pytest's 0700 tmp tree: Postgres runs as its own OS user and must reach it."""
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
        and not k.startswith("VAULT_")
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="module")
def server_venv(workdir: Path, clean_env: dict[str, str]) -> Path:
    # Clean copies: an in-tree build could pick up stale files from an old build/ directory.
    src_api = workdir / "src-api"
    src_server = workdir / "src-server"
    shutil.copytree(API, src_api, ignore=IGNORE)
    src_server.mkdir()
    shutil.copy(REPO / "pyproject.toml", src_server / "pyproject.toml")
    shutil.copytree(REPO / "vaultsvc", src_server / "vaultsvc", ignore=IGNORE)

    wheels = workdir / "wheels"
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(src_api),
         str(src_server)], cwd=workdir, env=clean_env)  # fmt: skip
    api_wheel = wheels / f"interakt_vault_api-{version_of(API / 'pyproject.toml')}-py3-none-any.whl"
    server_wheel = wheels / f"vaultsvc-{version_of(REPO / 'pyproject.toml')}-py3-none-any.whl"
    assert sorted(wheels.iterdir()) == sorted([api_wheel, server_wheel])

    venv = workdir / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=workdir, env=clean_env)
    python = venv / "bin/python"
    # This suite's pip installs into the new interpreter (`pip --python`): no ensurepip
    # round, and the pip cache is shared. The server wheel by path, so no other
    # distribution called vaultsvc can stand in for it; its pinned interakt-vault-api
    # comes from the wheels directory.
    run([*pip, "--python", str(python), "install", "--quiet", "--find-links", str(wheels),
         str(server_wheel)], cwd=workdir, env=clean_env, timeout=600)  # fmt: skip
    return python


def test_server_wheel_installs_without_the_client(
    server_venv: Path, workdir: Path, clean_env: dict[str, str]
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
    facts = json.loads(run([str(server_venv), "-c", probe], cwd=workdir, env=clean_env))
    venv = str(server_venv.parent.parent)
    assert facts["prefix"] == venv
    assert facts["vaultsvc"].startswith(venv + "/lib/"), facts["vaultsvc"]
    assert facts["stubs"].startswith(venv + "/lib/"), facts["stubs"]
    assert facts["interakt_init"] is None, "interakt must stay a namespace package"
    assert facts["client"] is False
    assert "vaultsvc-client" not in facts["dists"]
    assert "interakt-vault-api" in facts["dists"]
    assert facts["api_version"] == version_of(API / "pyproject.toml")
    # The installed stubs are the committed ones.
    installed = Path(facts["stubs"]).read_bytes()
    assert installed == (API / "src/interakt/vault/v1/secret_service_pb2.py").read_bytes()


def test_server_from_the_fresh_venv_starts_serves_health_and_stops_on_sigterm(
    server_venv: Path, workdir: Path, clean_env: dict[str, str]
) -> None:
    key_id, key = generate_master_key()
    env = {
        **clean_env,
        "VAULT_DATA_DIR": str(workdir / "vault-data"),
        "VAULT_LISTEN": "127.0.0.1:0",
        "VAULT_MASTER_KEYS": f"{key_id}:{key}",
        "VAULT_TOKENS": f"ops:admin:{hash_token(new_token()).hex()}",
    }
    stderr_path = workdir / "serve.log"
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [str(server_venv), "-m", "vaultsvc", "serve"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        address = wait_for_listen(proc, stderr_path, deadline=time.monotonic() + 120)
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, stderr_path.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


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
