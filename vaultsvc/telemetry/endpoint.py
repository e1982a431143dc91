"""The ``/metrics`` endpoint, the sampler of a vault's state, and the workers' shared
metrics directory.

One process serves ``/metrics`` (plain HTTP, Prometheus text format; any other path is 404):

- a single-process vault serves its own metrics (from the default registry);
- with ``workers`` > 1 the **supervisor** serves, and the workers only record: before it
  starts them it creates a private (0700) temporary directory and sets
  ``PROMETHEUS_MULTIPROC_DIR`` to it, so every worker's prometheus_client writes its values
  to files there (multiprocess mode), and the supervisor's ``MultiProcessCollector`` adds
  them up at each scrape: counters and histograms are summed (a restarted worker's counts
  are kept), gauges combine as each declares (``livesum``: the live workers' sum; ``min``;
  ``max``). A dead worker's live gauges are dropped (``mark_process_dead``); the directory
  is removed when the supervisor exits.

State that lives in objects (pool sizes, cache counters and size, audit queue depth) is
copied into the metrics by :class:`Sampler` every ``SAMPLE_INTERVAL`` seconds, off the
call path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from vaultsvc.ports import PortInUse, split_address

_log = logging.getLogger("vaultsvc.server")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_INTERVAL = 1.0
"""Seconds between two samples of pool, cache and audit queue state."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: Any = REGISTRY


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "not found: metrics are at /metrics")
            return
        try:
            body = generate_latest(self.server.registry)
        except Exception as exc:  # a torn multiprocess file, ...: no partial answer
            _log.error("metrics collection failed", extra={"error": type(exc).__name__})
            self.send_error(500, "metrics collection failed")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # scrapes are not worth a log line each


class MetricsEndpoint:
    """``/metrics`` on ``listen`` (``host:port``, port 0: any free port), served by a thread."""

    def __init__(self, listen: str, registry: Any = REGISTRY) -> None:
        host, port = split_address(listen)
        bare = host.strip("[]")
        family = socket.AF_INET6 if ":" in bare else socket.AF_INET

        class Server(_Server):
            address_family = family

        try:
            self._server = Server((bare, port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(listen, "metrics") from None
            raise
        self._server.registry = registry
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="vault-metrics", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class SharedMetrics:
    """The supervisor's side of multiprocess mode (see the module docstring)."""

    def __init__(self, listen: str) -> None:
        from prometheus_client import multiprocess

        self._multiprocess = multiprocess
        self.directory = tempfile.mkdtemp(prefix="vaultsvc-metrics-")  # mode 0700
        self._previous = os.environ.get(MULTIPROC_ENV)
        try:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
            self.endpoint = MetricsEndpoint(listen, registry)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def export(self) -> None:
        """Point the workers started from now on at the directory (they inherit it)."""
        os.environ[MULTIPROC_ENV] = self.directory

    def worker_exited(self, pid: int | None) -> None:
        if pid is not None:
            self._multiprocess.mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.endpoint.close()
        if self._previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = self._previous
        shutil.rmtree(self.directory, ignore_errors=True)


def local_registry() -> Any:
    """What a single-process vault serves: its own metrics, or the files of a
    multiprocess directory when one is set in its environment."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


class Sampler:
    """Copies pool, cache and audit-queue state into the metrics (see the module docstring)."""

    def __init__(self, db: Any, cache: Any, audit: Any) -> None:
        self.db = db
        self.cache = cache
        self.audit = audit
        self._seen = (0, 0, 0)
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        from vaultsvc.telemetry import metrics

        pool = self.db.pool
        size, idle = pool.get_size(), pool.get_idle_size()
        metrics.POOL_CONNECTIONS.labels("in_use").set(size - idle)
        metrics.POOL_CONNECTIONS.labels("idle").set(idle)
        metrics.POOL_CONNECTIONS.labels("max").set(pool.get_max_size())
        # asyncpg keeps its free connections in an asyncio.Queue: its getters are the waits.
        getters = getattr(getattr(pool, "_queue", None), "_getters", ())
        metrics.POOL_WAITING.set(sum(1 for waiter in getters if not waiter.done()))
        stats = self.cache.stats
        hits, negative, misses = stats.hits, stats.negative_hits, stats.misses
        seen_hits, seen_negative, seen_misses = self._seen
        metrics.CACHE_HITS.labels("positive").inc(max(hits - seen_hits, 0))
        metrics.CACHE_HITS.labels("negative").inc(max(negative - seen_negative, 0))
        metrics.CACHE_MISSES.inc(max(misses - seen_misses, 0))
        self._seen = (hits, negative, misses)
        metrics.CACHE_ENTRIES.set(len(self.cache))
        metrics.CACHE_BYTES.set(self.cache.bytes_used)
        metrics.AUDIT_QUEUE.set(len(self.audit._pending))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="vault-metrics")

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception as exc:  # never let a metric stop the vault
                _log.warning("metrics sample failed", extra={"error": type(exc).__name__})
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            self.sample()  # the last state (a scrape between stop and exit sees it)
