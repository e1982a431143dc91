"""Prometheus metrics of a vault (``metrics_listen``; README "Metrics and tracing").

Every metric is declared here, at import. Recording is off until :func:`enable` (a vault
with ``metrics_listen`` set, or a worker of a supervisor that serves them): each hook
below checks the module flag :data:`ON` first, so a vault without metrics pays one global
lookup per hook. Label children of the hot path are bound once (per method, per code) and
kept, so a call costs no ``labels()`` lookup after the first of its kind.

Labels never hold a value, a template or a caller-chosen name: RPC methods come from the
service descriptors (anything else is ``other``), codes from the gRPC code set, refusal
kinds and error kinds from fixed vocabularies, key ids from the operator's keyring.

With ``workers`` > 1 prometheus_client's multiprocess mode sums the workers (see
:mod:`vaultsvc.telemetry.endpoint`): gauges declare how they combine (``livesum`` for
sizes, ``min`` for the nonce budget, ``max`` for lag and build info).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import time
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from vaultsvc.crypto import NONCE_HARD_LIMIT

ON = False
"""Recording on (set once by :func:`enable`)."""

OTHER = "other"
RESOLVE_METHOD = "/interakt.vault.v1.ResolverService/ResolveTemplate"

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

RPC_HANDLED = Counter(
    "vaultsvc_grpc_server_handled",
    "RPCs completed, by method and gRPC status code",
    ("grpc_service", "grpc_method", "grpc_code"),
)
RPC_SECONDS = Histogram(
    "vaultsvc_grpc_server_handling_seconds",
    "time from a call's arrival to its reply being decided (audit commit included)",
    ("grpc_service", "grpc_method"),
    buckets=_LATENCY_BUCKETS,
)
RESOLVES = Counter(
    "vaultsvc_resolves", "ResolveTemplate calls by outcome (gRPC status code)", ("outcome",)
)
PLACEHOLDERS = Histogram(
    "vaultsvc_resolve_placeholders",
    "placeholders in one ResolveTemplate request (all fields)",
    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
CACHE_HITS = Counter(
    "vaultsvc_cache_hits", "sealed-row cache hits (negative: a name known missing)", ("kind",)
)
CACHE_MISSES = Counter("vaultsvc_cache_misses", "sealed-row cache misses (fetched from Postgres)")
CACHE_ENTRIES = Gauge(
    "vaultsvc_cache_entries", "sealed rows held by the cache", multiprocess_mode="livesum"
)
CACHE_BYTES = Gauge(
    "vaultsvc_cache_bytes", "bytes the cache accounts for its rows", multiprocess_mode="livesum"
)
CHANGE_LAG = Gauge(
    "vaultsvc_change_notification_lag",
    "changes committed in Postgres but not yet notified to this process, at the last "
    "periodic check (change sequence numbers; > 0 for a whole check interval clears the cache)",
    multiprocess_mode="max",
)
AUDIT_BATCH = Histogram(
    "vaultsvc_audit_batch_size",
    "audit events written by one group commit",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
AUDIT_QUEUE = Gauge(
    "vaultsvc_audit_queue_depth",
    "audit events waiting for a group commit",
    multiprocess_mode="livesum",
)
POOL_CONNECTIONS = Gauge(
    "vaultsvc_db_pool_connections",
    "database pool connections by state (in_use, idle, max)",
    ("state",),
    multiprocess_mode="livesum",
)
POOL_WAITING = Gauge(
    "vaultsvc_db_pool_waiting",
    "units of work waiting for a pool connection",
    multiprocess_mode="livesum",
)
DB_ERRORS = Counter(
    "vaultsvc_db_errors",
    "Postgres errors by kind (SQLSTATE class name, connection or timeout)",
    ("kind",),
)
WRAPS = Counter(
    "vaultsvc_master_key_wraps",
    "data keys wrapped by each master key (seal and rewrap), by this vault since it started",
    ("key_id",),
)
NONCE_BUDGET = Gauge(
    "vaultsvc_master_key_nonce_budget_remaining",
    "wraps a master key may still make under the AES-GCM random-nonce limit (2^32)",
    ("key_id",),
    multiprocess_mode="min",
)
REFUSED = Counter(
    "vaultsvc_calls_refused",
    "calls refused by the front door (overload shedding, stream and reply budgets)",
    ("kind",),
)
BUILD_INFO = Gauge(
    "vaultsvc_build_info", "the running vault's version", ("version",), multiprocess_mode="max"
)


class _Method:
    """The pre-bound children of one RPC method."""

    __slots__ = ("codes", "method", "resolve", "seconds", "service")

    def __init__(self, service: str, method: str, resolve: bool) -> None:
        self.service = service
        self.method = method
        self.resolve = resolve
        self.seconds = RPC_SECONDS.labels(service, method)
        self.codes: dict[str, Any] = {"OK": RPC_HANDLED.labels(service, method, "OK")}


_methods: dict[str, _Method] = {}
_other: _Method | None = None
_resolves: dict[str, Any] = {}
_refused: dict[str, Any] = {}
_db_errors: dict[str, Any] = {}


def version() -> str:
    try:
        return importlib.metadata.version("vaultsvc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def known_methods() -> list[str]:
    """Every ``/package.Service/Method`` of the contract's services (the descriptors of
    ``interakt.vault.v1``): the RPCs the interceptor sees (health and reflection are not
    counted)."""
    import interakt.vault.v1 as contract

    found: list[str] = []
    for info in pkgutil.iter_modules(contract.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"{contract.__name__}.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            found.extend(f"/{service.full_name}/{m.name}" for m in service.methods)
    return sorted(set(found))


def enable() -> None:
    """Start recording: bind the children every call uses, publish the build info."""
    global ON, _other
    if ON:
        return
    for full in known_methods():
        service, _, method = full[1:].rpartition("/")
        _methods[full] = _Method(service, method, full == RESOLVE_METHOD)
    _other = _Method(OTHER, OTHER, False)
    _resolves["OK"] = RESOLVES.labels("OK")
    BUILD_INFO.labels(version()).set(1)
    CACHE_HITS.labels("positive")
    CACHE_HITS.labels("negative")
    ON = True


# ------------------------------------------------------------------------ hooks


def rpc_done(method: str, code: str, started: float) -> None:
    """One RPC finished with ``code`` (``OK`` or a gRPC code name); ``started`` monotonic."""
    if not ON:
        return
    bound = _methods.get(method) or _other
    assert bound is not None
    bound.seconds.observe(time.monotonic() - started)
    child = bound.codes.get(code)
    if child is None:
        child = bound.codes[code] = RPC_HANDLED.labels(bound.service, bound.method, code)
    child.inc()
    if bound.resolve:
        resolved = _resolves.get(code)
        if resolved is None:
            resolved = _resolves[code] = RESOLVES.labels(code)
        resolved.inc()


def placeholders(compiled: Sequence[Any]) -> None:
    """A resolve's compiled templates (each with ``placeholders``), before any lookup."""
    if ON:
        PLACEHOLDERS.observe(sum(len(t.placeholders) for t in compiled))


def refused(kind: str) -> None:
    """The front door refused a call (``kind``: its fixed refusal kind)."""
    if ON:
        child = _refused.get(kind)
        if child is None:
            child = _refused[kind] = REFUSED.labels(kind)
        child.inc()


def audit_batch(size: int) -> None:
    if ON:
        AUDIT_BATCH.observe(size)


def change_lag(behind: int) -> None:
    """Committed change sequence minus the last one notified, at a periodic check."""
    if ON:
        CHANGE_LAG.set(max(behind, 0))


def db_error(kind: str) -> None:
    """A database failure (``kind``: SQLSTATE class name, ``connection``, ``timeout``)."""
    if ON:
        child = _db_errors.get(kind)
        if child is None:
            child = _db_errors[kind] = DB_ERRORS.labels(kind)
        child.inc()


def wraps(key_id: str, total: int | None, added: int) -> None:
    """``added`` data keys wrapped by ``key_id``, whose stored count is now ``total``."""
    if ON:
        WRAPS.labels(key_id).inc(added)
        if total is not None:
            NONCE_BUDGET.labels(key_id).set(max(NONCE_HARD_LIMIT - total, 0))


def key_usage(counts: Iterable[tuple[str, int]]) -> None:
    """The stored wrap count of every master key (at start-up)."""
    if ON:
        for key_id, total in counts:
            WRAPS.labels(key_id)
            NONCE_BUDGET.labels(key_id).set(max(NONCE_HARD_LIMIT - total, 0))
