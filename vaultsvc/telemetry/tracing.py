"""OpenTelemetry tracing, optional (extra ``vaultsvc[otel]``; README "Metrics and tracing").

On only when the standard variables ask for it (:func:`wanted`): ``OTEL_TRACES_EXPORTER``
set to anything but ``none``, or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true`` wins. The exporter,
protocol, endpoint, headers, service name and resource attributes are the SDK's own
``OTEL_*`` variables. When off, nothing of OpenTelemetry is imported and every hook is a
check of the module flag :data:`ON` (:func:`span` hands back one shared no-op object).

Spans: one per RPC (kind SERVER, parent taken from the incoming ``traceparent`` /
``tracestate`` metadata by the W3C propagator) with children ``vault.db`` (each unit of
work on the pool), ``vault.decrypt`` and ``vault.render`` (resolve). Attributes carry the
method, the outcome (gRPC code), counts and the server's request id: never a value, a
template, an error message or a secret name. Exceptions are not recorded on spans (their
messages may name secrets).
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Generator, Mapping
from typing import Any

ON = False
"""Tracing on (set once by :func:`configure` or :func:`install`)."""

_tracer: Any = None
_provider: Any = None
_propagator: Any = None
_server_kind: Any = None
_error_status: Any = None
_otel_context: Any = None
_set_span_in_context: Any = None
_get_current_span: Any = None
_rpc: contextvars.ContextVar[tuple[Any, object]] = contextvars.ContextVar("vaultsvc_rpc_span")


class TracingUnavailable(Exception):
    """Tracing was asked for by ``OTEL_*`` variables but the SDK is not installed."""


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces (see the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(environ: Mapping[str, str] = os.environ) -> None:
    """Turn tracing on when the environment asks for it (once per process)."""
    if ON or not wanted(environ):
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise TracingUnavailable(
            "tracing is configured (OTEL_* variables) but OpenTelemetry is not installed: "
            "pip install 'vaultsvc[otel]', or unset OTEL_TRACES_EXPORTER and "
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        ) from None
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": "vaultsvc"}
    provider = TracerProvider(resource=Resource.create(attributes))
    names = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    for name in (n.strip() for n in names.split(",")):
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(environ)))
        else:
            raise TracingUnavailable(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported here (use otlp, console or none)"
            )
    install(provider)


def _otlp_exporter(environ: Mapping[str, str]) -> Any:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    try:
        if protocol.startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            return HttpExporter()
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    except ImportError:
        raise TracingUnavailable(
            "OTLP trace export is configured but opentelemetry-exporter-otlp is not "
            "installed: pip install 'vaultsvc[otel]'"
        ) from None


def install(provider: Any) -> None:
    """Trace with ``provider`` (an SDK ``TracerProvider``; tests pass one with an in-memory
    exporter). The global OpenTelemetry provider is left alone."""
    global ON, _tracer, _provider, _propagator, _server_kind, _error_status
    global _otel_context, _set_span_in_context, _get_current_span
    from opentelemetry import context, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _otel_context = context
    _set_span_in_context = trace.set_span_in_context
    _get_current_span = trace.get_current_span
    _propagator = TraceContextTextMapPropagator()
    _server_kind = trace.SpanKind.SERVER
    _error_status = trace.Status(trace.StatusCode.ERROR)
    _provider = provider
    _tracer = provider.get_tracer("vaultsvc")
    ON = True


def flush() -> None:
    """Export what is buffered (a vault stopping)."""
    if _provider is not None:
        _provider.force_flush()


# ------------------------------------------------------------------------ hooks


def rpc_start(service: str, method: str, metadata: Mapping[str, Any]) -> None:
    """Open the current RPC's span, child of the caller's ``traceparent`` if it sent one."""
    if not ON:
        return
    parent = _propagator.extract(carrier=metadata)
    span = _tracer.start_span(
        f"{service}/{method}",
        context=parent,
        kind=_server_kind,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
    )
    token = _otel_context.attach(_set_span_in_context(span, parent))
    _rpc.set((span, token))


def rpc_end(code: str, request_id: str, secrets: int) -> None:
    """Close the current RPC's span with its outcome and counts."""
    if not ON:
        return
    current = _rpc.get(None)
    if current is None:
        return
    span, token = current
    _rpc.set((None, None))
    if span is None:
        return
    span.set_attribute("vaultsvc.outcome", code)
    span.set_attribute("vaultsvc.request_id", request_id)
    span.set_attribute("vaultsvc.secrets", secrets)
    if code != "OK":
        span.set_status(_error_status)
    span.end()
    _otel_context.detach(token)


def count(name: str, value: int) -> None:
    """A count on the current span (``vaultsvc.<name>``)."""
    if ON:
        _get_current_span().set_attribute(f"vaultsvc.{name}", value)


class _NoSpan:
    """The span of tracing off: enters and leaves, sync or async, doing nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    def __aenter__(self) -> _Done:
        return _DONE  # no coroutine to create

    def __aexit__(self, *exc: object) -> _Done:
        return _DONE


class _Done:
    """An awaitable that is already done (``await`` gives None at once)."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        # An empty iterator is all ``await`` needs (a generator would cost one per call).
        return iter(())  # type: ignore[return-value]


_DONE = _Done()


class _Span:
    __slots__ = ("_cm",)

    def __init__(self, name: str, attributes: dict[str, int] | None) -> None:
        self._cm = _tracer.start_as_current_span(
            name,
            attributes=attributes,
            record_exception=False,  # messages may name secrets
            set_status_on_exception=False,  # its description would be the message
        )

    def __enter__(self) -> None:
        self._cm.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)

    async def __aenter__(self) -> None:
        self._cm.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)


_NO_SPAN = _NoSpan()


def span(name: str, attribute: str = "", value: int = 0) -> _NoSpan | _Span:
    """A child span of the current one (``with`` or ``async with``), with one optional
    count attribute ``vaultsvc.<attribute>``."""
    if not ON:
        return _NO_SPAN
    return _Span(name, {f"vaultsvc.{attribute}": value} if attribute else None)


def uninstall() -> None:
    """Tracing off again (tests that installed a provider)."""
    global ON, _tracer, _provider
    ON = False
    _tracer = None
    _provider = None
