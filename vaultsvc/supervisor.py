"""Multi-process serving: ``serve --workers N`` (``workers`` / ``VAULT_WORKERS``).

A small supervisor process claims the listen port (:mod:`vaultsvc.ports`), starts an
embedded Postgres when no database URL is configured (one for all workers), and runs N
worker processes. Each worker is a whole vault (:func:`vaultsvc.server.start_server`): its
own database pool, cache, listener and audit writer; the workers bind the claimed port with
``SO_REUSEPORT`` and the kernel spreads connections over them. The console port
(``console.listen``), when set, follows the same rule: claimed here, joined by every worker
(each serves the console from its own vault; sessions live in the shared database).

The supervisor:

- prints the ready line (``vault listening`` with the concrete address) once, when every
  worker serves;
- serves ``/metrics`` (``metrics_listen``) for all workers: their sum, through
  prometheus_client's multiprocess mode in a private directory it creates and removes
  (:mod:`vaultsvc.telemetry.endpoint`);
- forwards SIGTERM and SIGINT to every worker; each drains as a single vault does (health
  NOT_SERVING, then new calls refused with UNAVAILABLE, in-flight calls finish within the
  grace period) and the supervisor exits 0 when they all did;
- restarts a worker that dies unexpectedly, logging its exit code or signal, and gives up
  (stops the others, exits ``EXIT_WORKERS_FAILING``) when more than ``RESTART_LIMIT``
  restarts happen within ``RESTART_WINDOW`` seconds; a worker that fails while the vault
  starts (a wrong master key, an unreachable database) stops the whole vault at once;
- never forks: workers are started with the ``spawn`` method (a fresh interpreter), as grpc
  does not survive a fork.

Workers die with the supervisor (``PR_SET_PDEATHSIG``), so a killed supervisor never leaves
workers serving on a port nobody holds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Literal

from vaultsvc.cli.common import EXIT_CONFIG, EXIT_INCOMPLETE, EXIT_OK, EXIT_WORKERS_FAILING
from vaultsvc.config import ConfigError, Settings
from vaultsvc.logs import configure_logging
from vaultsvc.ports import PortClaim, PortInUse, claim
from vaultsvc.storage.embedded import EmbeddedPostgres
from vaultsvc.telemetry.endpoint import SharedMetrics

_log = logging.getLogger("vaultsvc.supervisor")

RESTART_LIMIT = 5
"""More restarts than this within ``RESTART_WINDOW`` seconds: the supervisor gives up."""
RESTART_WINDOW = 60.0
KILL_MARGIN = 15.0
"""Seconds past the grace period a draining worker gets before it is killed."""

# ----------------------------------------------------------------- worker count


def cpu_quota_v2(cpu_max: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` (``"150000 100000"`` -> 1.5; ``max``: None)."""
    parts = cpu_max.split()
    if not parts or parts[0] == "max":
        return None
    period = float(parts[1]) if len(parts) > 1 else 100_000.0
    quota = float(parts[0])
    return quota / period if quota > 0 and period > 0 else None


def cpu_quota_v1(quota: str, period: str) -> float | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: None)."""
    q, p = float(quota.strip()), float(period.strip())
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None


def _ancestors(mount: Path, relative: str) -> list[Path]:
    """``mount/relative`` and each parent up to ``mount`` (limits of parents apply too);
    just ``mount`` when the path is not visible (a cgroup namespace)."""
    here = mount / relative.strip("/")
    if not here.is_dir():
        return [mount]
    chain = [here]
    while chain[-1] != mount and mount in chain[-1].parents:
        chain.append(chain[-1].parent)
    return chain


def cgroup_cpu_limit(self_cgroup: str, root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The tightest CPU limit of the cgroups in ``self_cgroup`` (``/proc/self/cgroup``'s
    text), v2 ``cpu.max`` and v1 CFS quota alike, or None when nothing limits the CPU."""
    limits: list[float] = []
    for line in self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            for directory in _ancestors(root, relative):
                text = _read(directory / "cpu.max")
                limit = cpu_quota_v2(text) if text else None
                if limit is not None:
                    limits.append(limit)
        elif "cpu" in controllers.split(","):
            for name in (controllers, "cpu,cpuacct", "cpuacct,cpu", "cpu"):
                mount = root / name
                if mount.is_dir():
                    break
            else:
                continue
            for directory in _ancestors(mount, relative):
                quota = _read(directory / "cpu.cfs_quota_us")
                period = _read(directory / "cpu.cfs_period_us")
                if quota and period:
                    limit = cpu_quota_v1(quota, period)
                    if limit is not None:
                        limits.append(limit)
    return min(limits) if limits else None


def available_cpus(
    root: Path = Path("/sys/fs/cgroup"), self_cgroup: Path = Path("/proc/self/cgroup")
) -> int:
    """The CPUs this process may use: its affinity, within its cgroup CPU quota (rounded
    down: 1.5 CPUs of quota give 1), at least 1."""
    count = len(os.sched_getaffinity(0))
    text = _read(self_cgroup)
    limit = cgroup_cpu_limit(text, root) if text else None
    if limit is not None:
        count = min(count, math.floor(limit))
    return max(1, count)


def worker_count(setting: int | Literal["auto"]) -> int:
    return available_cpus() if setting == "auto" else max(1, int(setting))


# ----------------------------------------------------------------------- worker


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the request took effect
        sys.exit(EXIT_INCOMPLETE)


def worker_main(
    settings: Settings, index: int, ready: multiprocessing.connection.Connection, parent: int
) -> None:
    """A worker process (spawned): one vault on the shared port until SIGTERM/SIGINT."""
    _die_with_parent(parent)
    # The label is part of the formatter, not a filter: a filter on the handler would
    # turn the access log's direct path off (vaultsvc.logs).
    configure_logging(settings.log_level, settings.log_format, labels={"worker": index})
    stop_requested: list[int] = []

    def early(signum: int, frame: FrameType | None) -> None:
        stop_requested.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, early)
    sys.exit(asyncio.run(_serve_worker(settings, ready, stop_requested)))


async def _serve_worker(
    settings: Settings, ready: multiprocessing.connection.Connection, early: list[int]
) -> int:
    from vaultsvc.bootstrap import StartupError
    from vaultsvc.server import start_server, stop_server

    try:
        runtime = await start_server(settings, shared_port=True)
    except (ConfigError, StartupError, PortInUse) as exc:
        _log.error("worker cannot start: %s", exc)
        return EXIT_CONFIG
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if early:
        stop.set()
    try:
        ready.send(os.getpid())
        await stop.wait()
    finally:
        await stop_server(runtime)
    return EXIT_OK


# ------------------------------------------------------------------- supervisor


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    ready: multiprocessing.connection.Connection
    serving: bool = False


class Supervisor:
    """Runs ``count`` workers on a claimed port; see the module docstring."""

    def __init__(self, settings: Settings, count: int, ready_message: str | None = None) -> None:
        self.settings = settings
        self.count = count
        self.ready_message = ready_message
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, _Worker] = {}
        self.restarts: collections.deque[float] = collections.deque()
        self.pending_restarts: dict[int, float] = {}
        self.stop_signal: int | None = None
        self._console_port: PortClaim | None = None
        self._metrics: SharedMetrics | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # -- signals

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signal = signum
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- workers

    def _spawn(self, index: int, settings: Settings) -> None:
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=worker_main,
            args=(settings, index, send, os.getpid()),
            name=f"vault-worker-{index}",
            daemon=False,
        )
        process.start()
        send.close()
        self.workers[index] = _Worker(index, process, receive)
        _log.debug("worker started", extra={"worker": index, "pid": process.pid})

    @staticmethod
    def _describe_exit(code: int | None) -> str:
        if code is None:
            return "unknown"
        if code < 0:
            try:
                return f"signal {signal.Signals(-code).name}"
            except ValueError:
                return f"signal {-code}"
        return f"exit code {code}"

    def _stop_workers(self) -> int:
        """SIGTERM every worker, wait for them to drain (kill the late), return the code."""
        for worker in self.workers.values():
            if worker.process.is_alive() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
        deadline = (
            time.monotonic()
            + self.settings.grace_period
            + self.settings.shutdown_delay
            + KILL_MARGIN
        )
        code = EXIT_OK
        for worker in self.workers.values():
            worker.process.join(max(deadline - time.monotonic(), 0))
            if worker.process.is_alive():
                _log.error(
                    "worker did not drain in time; killing it",
                    extra={"worker": worker.index, "pid": worker.process.pid},
                )
                worker.process.kill()
                worker.process.join()
            if worker.process.exitcode not in (0, None):
                code = EXIT_INCOMPLETE
            worker.ready.close()
        return code

    # -- main loop

    def run(self) -> int:
        """Claim, start, supervise; the exit code of ``serve``."""
        from vaultsvc.bootstrap import check_transport
        from vaultsvc.console.server import check_console_transport

        check_transport(self.settings)
        if self.settings.console_listen is not None:
            check_console_transport(self.settings, self.settings.console_listen)
        port: PortClaim = claim(self.settings.listen)
        try:
            console_port = (
                None
                if self.settings.console_listen is None
                else claim(self.settings.console_listen, "console")
            )
        except BaseException:
            port.close()
            raise
        self._console_port = console_port
        embedded: EmbeddedPostgres | None = None
        try:  # served here, summed over the workers (vaultsvc.telemetry.endpoint)
            self._metrics = (
                None
                if self.settings.metrics_listen is None
                else SharedMetrics(self.settings.metrics_listen)
            )
        except BaseException:
            port.close()
            if console_port is not None:
                console_port.close()
            raise
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            settings = replace(
                self.settings,
                listen=port.address,
                console_listen=None if console_port is None else console_port.address,
                metrics_listen=None,
            )
            if not settings.database.url:
                embedded = EmbeddedPostgres(settings.data_dir)
                embedded.start()
                settings = replace(
                    settings, database=replace(settings.database, url=embedded.uri())
                )
            return self._supervise(settings, port)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            port.close()
            if console_port is not None:
                console_port.close()
            if embedded is not None:
                embedded.stop()
            if self._metrics is not None:
                self._metrics.close()
            self._wake_r.close()
            self._wake_w.close()

    def _supervise(self, settings: Settings, port: PortClaim) -> int:
        if self._metrics is not None:
            self._metrics.export()  # only now: the embedded Postgres must not inherit it
        for index in range(1, self.count + 1):
            self._spawn(index, settings)
        announced = False
        while True:
            if self.stop_signal is not None:
                _log.info(
                    "shutdown requested; draining every worker",
                    extra={"signal": signal.Signals(self.stop_signal).name},
                )
                return self._stop_workers()
            now = time.monotonic()
            for index, when in list(self.pending_restarts.items()):
                if when <= now:
                    del self.pending_restarts[index]
                    self._spawn(index, settings)
            if not announced and all(w.serving for w in self.workers.values()):
                announced = True
                self._announce(port)
            waits: list[object] = [self._wake_r]
            for worker in self.workers.values():
                waits.append(worker.process.sentinel)
                if not worker.serving:
                    waits.append(worker.ready)
            timeout = (
                max(min(self.pending_restarts.values()) - now, 0) if self.pending_restarts else None
            )
            for ready in multiprocessing.connection.wait(waits, timeout):  # type: ignore[arg-type]
                if ready is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
            for worker in list(self.workers.values()):
                if not worker.serving and worker.ready.poll():
                    try:
                        worker.ready.recv()
                        worker.serving = True
                    except EOFError:
                        pass
                if worker.index in self.pending_restarts or worker.process.is_alive():
                    continue
                if self.stop_signal is not None:
                    break
                failed = self._worker_died(worker, announced)
                if failed is not None:
                    return failed

    def _worker_died(self, worker: _Worker, announced: bool) -> int | None:
        """A worker exited on its own: restart it, or give up (the exit code)."""
        code = worker.process.exitcode
        worker.ready.close()
        if self._metrics is not None:
            self._metrics.worker_exited(worker.process.pid)
        _log.error(
            "worker died unexpectedly",
            extra={
                "worker": worker.index,
                "pid": worker.process.pid,
                "exit": self._describe_exit(code),
            },
        )
        del self.workers[worker.index]
        if not announced and not worker.serving:
            # It never served: the vault cannot start (its own log line said why).
            self._stop_workers()
            return code if code is not None and code > 0 else EXIT_INCOMPLETE
        now = time.monotonic()
        self.restarts.append(now)
        while self.restarts and self.restarts[0] < now - RESTART_WINDOW:
            self.restarts.popleft()
        if len(self.restarts) > RESTART_LIMIT:
            _log.error(
                "workers keep dying; stopping the vault",
                extra={"restarts": len(self.restarts), "window_seconds": RESTART_WINDOW},
            )
            self._stop_workers()
            return EXIT_WORKERS_FAILING
        delay = min(5.0, 0.25 * 2 ** (len(self.restarts) - 1))
        self.pending_restarts[worker.index] = now + delay
        _log.warning("restarting worker", extra={"worker": worker.index, "in_seconds": delay})
        return None

    def _announce(self, port: PortClaim) -> None:
        _log.info(
            "vault listening",
            extra={
                "listen": port.address,
                "console": None if self._console_port is None else self._console_port.address,
                "metrics": None if self._metrics is None else self._metrics.endpoint.address,
                "tls": self.settings.tls is not None,
                "workers": self.count,
            },
        )
        if self.ready_message:
            console = self._console_port
            scheme = "https" if self.settings.tls is not None else "http"
            console_url = "off" if console is None else f"{scheme}://{console.address}/"
            message = self.ready_message.replace("{port}", str(port.port))
            metrics_url = "off" if self._metrics is None else self._metrics.endpoint.url
            message = message.replace("{metrics_url}", metrics_url)
            print(message.replace("{console_url}", console_url), flush=True)
