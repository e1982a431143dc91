"""Conversions shared by the servicers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import timestamp_pb2


def timestamp(value: datetime | None) -> Any:
    """A ``google.protobuf.Timestamp`` (or None to leave the field unset)."""
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts
