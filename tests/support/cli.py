"""``python -m vaultsvc`` as real subprocesses driven by asyncio: one way to run a command
(:func:`run_cli`) and one way to start ``serve`` (:func:`start_serve`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 120.0
SERVE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli_env(database_url: str | None, master_keys: str | None, **extra: str) -> dict[str, str]:
    """This process's environment without any ``VAULT_*``, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    if database_url is not None:
        env["VAULT_DATABASE_URL"] = database_url
    if master_keys is not None:
        env["VAULT_MASTER_KEYS"] = master_keys
    env["VAULT_LOG_FORMAT"] = "text"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def serve_env(url: str, master_keys: str, tmp_path: Path) -> dict[str, str]:
    """A ``serve`` on ``url`` with ``master_keys``, an unused admin token and port 0."""
    digest = hashlib.sha256(secrets.token_bytes(16)).hexdigest()
    return cli_env(
        url,
        master_keys,
        VAULT_TOKENS=f"ops:admin:{digest}",
        VAULT_LISTEN="127.0.0.1:0",
        VAULT_DATA_DIR=str(tmp_path / "unused-data-dir"),
    )


async def start_cli(
    args: Sequence[str], env: Mapping[str, str] | None = None, *, stderr: int | None = None
) -> asyncio.subprocess.Process:
    """``python -m vaultsvc *args`` with pipes (``stderr`` may name a file descriptor)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vaultsvc",
        *args,
        env=dict(os.environ if env is None else env),
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if stderr is None else stderr,
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float = CLI_TIMEOUT) -> Completed:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"subprocess did not finish within {timeout}s") from None
    assert proc.returncode is not None
    return Completed(
        proc.returncode,
        out.decode("utf-8", "replace"),
        (err or b"").decode("utf-8", "replace"),
    )


async def run_cli(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = CLI_TIMEOUT
) -> Completed:
    """Run one command to completion (``env`` None: this process's environment)."""
    return await finish(await start_cli(args, env), timeout)


# ------------------------------------------------------------------------- serve

_READY = "vault listening"
_LISTEN = re.compile(r'listen="([^"]+)"')


def bound_address(log_line: str) -> str | None:
    """The address from serve's ready line (``vault listening``), JSON or text format."""
    if _READY not in log_line:
        return None
    text = log_line.strip()
    if text.startswith("{"):
        record = json.loads(text)
        return str(record["listen"]) if record.get("msg") == _READY else None
    found = _LISTEN.search(text)
    return found.group(1) if found else None


@dataclass
class ServeProcess:
    proc: asyncio.subprocess.Process
    address: str
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def reported_address(self) -> str | None:
        """The address from the ready line on stderr, once it is there."""
        for line in self.stderr().splitlines():
            address = bound_address(line)
            if address is not None:
                return address
        return None

    async def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout=timeout)


async def start_serve(
    env: Mapping[str, str],
    stderr_path: Path,
    timeout: float = SERVE_TIMEOUT,
    command: str = "serve",
) -> ServeProcess:
    """``python -m vaultsvc serve`` (or ``dev``) listening on port 0; returns once it reports
    the address it bound (its ready line) and answers health checks as SERVING."""
    listen = env.get("VAULT_LISTEN", "127.0.0.1:0")
    assert listen.endswith(":0"), "serve binds port 0 and reports the port it got"
    with stderr_path.open("wb") as err:
        proc = await start_cli([command], {**env, "VAULT_LISTEN": listen}, stderr=err.fileno())
    handle = ServeProcess(proc, "", stderr_path)
    deadline = time.monotonic() + timeout
    while not handle.address:
        if proc.returncode is not None:
            raise AssertionError(f"serve exited early: {handle.stderr()}")
        handle.address = handle.reported_address() or ""
        if not handle.address:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"serve did not report its address: {handle.stderr()}")
            await asyncio.sleep(0.1)
    async with grpc.aio.insecure_channel(handle.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.returncode is not None:
                raise AssertionError(f"serve exited early: {handle.stderr()}")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return handle
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"serve did not become healthy: {handle.stderr()}")
            await asyncio.sleep(0.2)
