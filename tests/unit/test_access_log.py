"""The access log's direct path (vaultsvc.logs.AccessLog) writes exactly the line the
ordinary logging path would, and steps aside whenever logging is configured otherwise."""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from vaultsvc import logs
from vaultsvc.logs import AccessLog, JsonFormatter, TextFormatter, configure_logging

FIELDS: dict[str, Any] = {
    "method": "/interakt.vault.v1.ResolverService/ResolveTemplate",
    "principal": "ci-bot",
    "outcome": "OK",
    "reason": "",
    "request_id": "0" * 32,
    "client_request_id": "c-1",
    "peer": "ipv4:127.0.0.1:4242\r\nforged",
    "secret_names": ["db_password", "é"],
    "tool": "",
    "duration_ms": 1.234,
}


class Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, installed = list(root.handlers), root.level, list(logs._installed)
    access = logging.getLogger("test.access")
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logs._installed[:] = installed
    access.setLevel(logging.NOTSET)
    access.filters.clear()


def test_the_timestamp_is_what_datetime_gives() -> None:
    rng = random.Random(9)
    now = time.time()
    samples = [now + rng.uniform(-1e6, 1e6) for _ in range(20000)]
    samples += [1.9999995, 1.0000005, 1700000000.9999996, 1700000000.0004995, 0.0, now]
    samples += [float(int(now)) + k / 1000 for k in range(1000)]
    for created in samples:
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert logs._timestamp(created) == expected, created


def _expected(formatter: logging.Formatter, created: float) -> str:
    record = logging.makeLogRecord(
        {"name": "test.access", "levelno": logging.INFO, "levelname": "INFO", "msg": "rpc"}
    )
    record.created = created
    record.__dict__.update(FIELDS)
    return formatter.format(record)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_direct_line_is_the_formatters_line(
    fmt: str, restored_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    configure_logging("INFO", fmt, stream)
    logger = logging.getLogger("test.access")
    access = AccessLog(logger, "rpc")

    def no_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        raise AssertionError("the direct path builds no LogRecord")

    monkeypatch.setattr(logger, "makeRecord", no_record)
    assert access.enabled()
    created = time.time()
    access.write(created, dict(FIELDS))
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    assert stream.getvalue() == _expected(formatter, created) + "\n"
    assert "\r" not in stream.getvalue() and stream.getvalue().count("\n") == 1


def test_other_handlers_and_filters_get_records_as_before(restored_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    logger = logging.getLogger("test.access")
    access = AccessLog(logger, "rpc")
    collector = Collector()
    logging.getLogger().addHandler(collector)
    access.write(time.time(), dict(FIELDS))
    (record,) = collector.records
    assert record.name == "test.access" and record.getMessage() == "rpc"
    assert {k: record.__dict__[k] for k in FIELDS} == FIELDS
    assert stream.getvalue() == _expected(JsonFormatter(), record.created) + "\n"

    logging.getLogger().removeHandler(collector)
    logger.addFilter(lambda r: r.__dict__.get("outcome") != "OK")
    access.write(time.time(), dict(FIELDS))
    assert stream.getvalue().count("\n") == 1  # filtered out: nothing written

    logger.filters.clear()
    logger.setLevel(logging.WARNING)
    assert not access.enabled()


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_labels_of_every_line_keep_the_direct_path(
    fmt: str, restored_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's label (``worker``) is part of its formatter, not a filter: its access
    lines still take the direct path, and read as the ordinary path's lines do."""
    stream = io.StringIO()
    configure_logging("INFO", fmt, stream, labels={"worker": 3})
    logger = logging.getLogger("test.access")
    access = AccessLog(logger, "rpc")
    monkeypatch.setattr(logger, "makeRecord", _no_record)
    created = time.time()
    access.write(created, dict(FIELDS))
    formatter = (
        JsonFormatter(labels={"worker": 3})
        if fmt == "json"
        else TextFormatter(labels={"worker": 3})
    )
    line = stream.getvalue()
    assert line == _expected(formatter, created) + "\n"
    assert ('"worker": 3' if fmt == "json" else "worker=3") in line
    monkeypatch.undo()

    logging.getLogger("test.other").warning("plain", extra={"k": "v"})
    other = stream.getvalue().splitlines()[-1]
    assert ('"worker": 3' if fmt == "json" else "worker=3") in other


def _no_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    raise AssertionError("the direct path builds no LogRecord")
