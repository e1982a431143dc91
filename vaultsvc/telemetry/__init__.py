"""Metrics (Prometheus) and tracing (OpenTelemetry) of a vault.

The rest of the vault calls the one-line hooks here and in :mod:`.metrics` /
:mod:`.tracing`; each is a flag check when its side is off. :func:`start` (server start)
opens the ``/metrics`` endpoint and configures tracing from ``OTEL_*``; :func:`watch`
starts the sampler of the vault's state.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from vaultsvc.telemetry import metrics, tracing
from vaultsvc.telemetry.endpoint import MULTIPROC_ENV, MetricsEndpoint, Sampler, local_registry

if TYPE_CHECKING:
    from vaultsvc.audit import CallContext
    from vaultsvc.config import Settings

__all__ = [
    "MetricsEndpoint",
    "metrics",
    "placeholders",
    "rpc_done",
    "rpc_start",
    "start",
    "tracing",
    "watch",
]

_names: dict[str, tuple[str, str]] = {}


def _method_names(method: str) -> tuple[str, str]:
    if not _names:
        for full in metrics.known_methods():
            service, _, name = full[1:].rpartition("/")
            _names[full] = (service, name)
    return _names.get(method) or (metrics.OTHER, metrics.OTHER)


def rpc_start(method: str, metadata: Iterable[tuple[str, Any]]) -> None:
    """An RPC begins (the interceptor, with the call's metadata pairs): its span, when
    tracing is on (the pairs become a mapping only then)."""
    if tracing.ON:
        tracing.rpc_start(*_method_names(method), dict(metadata))


def rpc_done(call: CallContext, code: str, started: float) -> None:
    """An RPC's reply is decided (the interceptor): metrics and the end of its span."""
    if metrics.ON:
        metrics.rpc_done(call.method, code, started)
    if tracing.ON:
        tracing.rpc_end(code, call.request_id, len(call.record.secret_names))


def placeholders(compiled: Sequence[Any]) -> None:
    """A resolve's compiled templates: the placeholder count (histogram, span attribute)."""
    if metrics.ON:
        metrics.placeholders(compiled)
    if tracing.ON:
        tracing.count("placeholders", sum(len(t.placeholders) for t in compiled))


def start(settings: Settings, resources: contextlib.AsyncExitStack) -> MetricsEndpoint | None:
    """At server start: tracing from ``OTEL_*``; the ``/metrics`` endpoint when
    ``metrics_listen`` is set; recording alone in a worker of a supervisor that serves."""
    try:
        tracing.configure()
    except tracing.TracingUnavailable as exc:
        from vaultsvc.bootstrap import StartupError

        raise StartupError(str(exc)) from None
    if tracing.ON:
        resources.callback(tracing.flush)
    endpoint = None
    if settings.metrics_listen is not None:
        endpoint = MetricsEndpoint(settings.metrics_listen, local_registry())
        resources.callback(endpoint.close)
    if endpoint is not None or os.environ.get(MULTIPROC_ENV):
        metrics.enable()
    return endpoint


async def watch(resources: contextlib.AsyncExitStack, db: Any, vault: Any, audit: Any) -> None:
    """Sample pool, cache and audit state while the vault runs (metrics on only); publish
    each master key's stored wrap count (the nonce budget)."""
    if not metrics.ON:
        return
    with contextlib.suppress(Exception):  # a gauge is not worth failing a start for
        usage = await vault.repo.key_usage()
        metrics.key_usage((u.key_id, u.wrap_count) for u in usage)
    sampler = Sampler(db, vault.cache, audit)
    sampler.start()
    resources.push_async_callback(sampler.stop)
