"""Conversions shared by the servicers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2
from interakt.vault.v1 import usage_pb2

from vaultsvc.domain import UsageRecord
from vaultsvc.errors import InvalidArgument, Reason


def timestamp(value: datetime | None) -> Any:
    """A ``google.protobuf.Timestamp`` (or None to leave the field unset)."""
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def usage_message(usage: UsageRecord | None) -> usage_pb2.Usage | None:
    """``Usage`` of a secret or config value (None: not loaded, the field stays unset)."""
    if usage is None:
        return None  # not loaded by this call (a write's reply): left unset
    return usage_pb2.Usage(
        last_resolve_time=timestamp(usage.last_resolve_time),
        resolve_count=usage.resolve_count,
        tools=[
            usage_pb2.ToolUsage(
                tool=t.tool,
                last_resolve_time=timestamp(t.last_resolve_time),
                resolve_count=t.resolve_count,
            )
            for t in usage.tools
        ],
    )


def optional_time(message: Any, field: str) -> datetime | None:
    """A request's Timestamp field as an aware datetime (None when unset); one out of
    Timestamp's range is INVALID_ARGUMENT."""
    if not message.HasField(field):
        return None
    value = getattr(message, field)
    try:
        return value.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]
    except (ValueError, OverflowError, OSError):
        raise InvalidArgument(
            f"{field} is not a valid time", reason=Reason.INVALID_FILTER, metadata={"field": field}
        ) from None
