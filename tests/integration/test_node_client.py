"""Runs the Node.js client's own tests (clients/node/test/) from pytest.

- ``test_node_client_offline``: proto loading, the client's method list and
  error decoding against an in-process grpc-js fake; needs no vault.
- ``test_node_client_smoke``: ``smoke.test.mjs`` against an in-process vault
  (admin, viewer, resolver and operator tokens; the operator mints tokens).

Both are skipped only when ``node`` is not on PATH. ``npm ci`` is run first
when ``clients/node/node_modules`` is missing or older than the lock file.
The vault runs on this test's event loop, so node runs as an asyncio
subprocess and is never waited for synchronously.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from vaultsvc.auth import ADMIN, OPERATOR, RESOLVER, VIEWER, new_token

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "clients" / "node"
TEST_DIR = NODE_DIR / "test"
LOCK = NODE_DIR / "package-lock.json"
INSTALLED_LOCK = NODE_DIR / "node_modules" / ".package-lock.json"
REQUIRED_MODULES = ("@grpc/grpc-js", "@grpc/proto-loader", "protobufjs")

NPM_CI_TIMEOUT_S = 240.0
NODE_TEST_TIMEOUT_S = 150.0
MIN_NODE = (18, 15)  # node:test with --test-reporter

SMOKE_FILES = ("smoke.test.mjs",)
OFFLINE_FILES = ("protos.test.mjs", "fake_server.test.mjs")
VAULT_ENV = (
    "VAULT_ADDR",
    "VAULT_ADMIN_TOKEN",
    "VAULT_VIEWER_TOKEN",
    "VAULT_RESOLVER_TOKEN",
    "VAULT_OPERATOR_TOKEN",
)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip(
            "node is not on PATH: the Node.js client tests (clients/node) need Node.js >= 18.15"
        )
    return node


async def _run(
    argv: list[str], *, cwd: Path, env: dict[str, str], limit_s: float
) -> tuple[int, str]:
    """Runs argv without blocking the loop; returns (exit code, stdout+stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(cwd),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # node --test forks one process per file: kill the group
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    except BaseException as exc:  # timeout, or the test being cancelled
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(proc.wait(), 10)
        if isinstance(exc, TimeoutError):
            pytest.fail(f"{' '.join(argv)} timed out after {limit_s:.0f}s (cwd {cwd})")
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace")


def _tail(text: str, limit: int = 12_000) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


async def _check_node_version(node: str) -> None:
    rc, out = await _run([node, "--version"], cwd=NODE_DIR, env=dict(os.environ), limit_s=30)
    m = re.match(r"v(\d+)\.(\d+)", out.strip())
    assert rc == 0 and m, f"`node --version` failed: {out!r}"
    version = (int(m.group(1)), int(m.group(2)))
    assert version >= MIN_NODE, (
        f"node {out.strip()} is too old for clients/node; need >= {MIN_NODE[0]}.{MIN_NODE[1]}"
    )


def _needs_install() -> bool:
    if not INSTALLED_LOCK.exists():
        return True
    if any(not (NODE_DIR / "node_modules" / m / "package.json").exists() for m in REQUIRED_MODULES):
        return True
    return LOCK.stat().st_mtime > INSTALLED_LOCK.stat().st_mtime


async def _ensure_node_modules() -> None:
    if not _needs_install():
        return
    npm = shutil.which("npm")
    assert npm is not None, (
        "clients/node/node_modules is missing and npm is not on PATH; "
        "run `npm ci --prefix clients/node` with a Node.js install that has npm"
    )
    rc, out = await _run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=NODE_DIR,
        env=dict(os.environ),
        limit_s=NPM_CI_TIMEOUT_S,
    )
    assert rc == 0, f"`npm ci` in clients/node failed (exit {rc}):\n{_tail(out)}"


def _test_paths(files: tuple[str, ...]) -> list[str]:
    paths = [TEST_DIR / f for f in files]
    for p in paths:
        assert p.is_file(), f"missing Node test file {p}"
    return [str(p) for p in paths]


async def _node_test(files: tuple[str, ...], extra_env: dict[str, str]) -> str:
    node = _node()
    await _check_node_version(node)
    await _ensure_node_modules()
    paths = _test_paths(files)
    env = {k: v for k, v in os.environ.items() if k not in VAULT_ENV}
    env.update({"NO_COLOR": "1", "NODE_ENV": "test", **extra_env})
    argv = [node, "--test", "--test-reporter=tap", *paths]
    rc, out = await _run(argv, cwd=NODE_DIR, env=env, limit_s=NODE_TEST_TIMEOUT_S)
    assert rc == 0, f"node --test failed (exit {rc}):\n{_tail(out)}"
    assert re.search(r"^# fail 0$", out, re.M), f"node --test reported failures:\n{_tail(out)}"
    # A skipped suite is not counted in "# skipped": look for the directive itself.
    assert "# SKIP" not in out, f"node tests were skipped:\n{_tail(out)}"
    m = re.search(r"^# pass (\d+)$", out, re.M)
    assert m and int(m.group(1)) > 0, f"no Node test passed:\n{_tail(out)}"
    return out


async def test_node_client_offline() -> None:
    await _node_test(OFFLINE_FILES, {})


async def test_node_client_smoke(make_vault: Any) -> None:
    vault = await make_vault(tokens={r: new_token() for r in (ADMIN, VIEWER, RESOLVER, OPERATOR)})
    tokens = vault.tokens
    out = await _node_test(
        SMOKE_FILES,
        {
            "VAULT_ADDR": vault.address,
            "VAULT_ADMIN_TOKEN": tokens["admin"],
            "VAULT_VIEWER_TOKEN": tokens["viewer"],
            "VAULT_RESOLVER_TOKEN": tokens["resolver"],
            "VAULT_OPERATOR_TOKEN": tokens["operator"],
            "VAULT_SMOKE_REQUIRED": "1",
        },
    )
    m = re.search(r"^# pass (\d+)$", out, re.M)
    assert m and int(m.group(1)) >= 19, f"expected every smoke test to run:\n{_tail(out)}"


def test_package_lock_is_committed_and_in_sync() -> None:
    """package-lock.json exists and matches package.json's dependencies."""
    pkg = json.loads((NODE_DIR / "package.json").read_text())
    lock = json.loads(LOCK.read_text())
    assert lock.get("lockfileVersion", 0) >= 2
    root = lock["packages"][""]
    assert root.get("dependencies", {}) == pkg.get("dependencies", {}), (
        "clients/node/package-lock.json is out of date: run `npm install` in clients/node"
    )
    for name in REQUIRED_MODULES:
        assert f"node_modules/{name}" in lock["packages"], f"{name} missing from package-lock.json"
