"""Page tokens: opaque to clients, bound to the filter they were issued for.

A token is the URL-safe base64 (unpadded) of ``{"v": 1, "a": <position>, "f": <filter>}``.
It is not a secret and carries no authority: a forged token only moves where a listing
starts within what the caller may already list.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from vaultsvc.errors import InvalidArgument, Reason


def _not_issued() -> InvalidArgument:
    return InvalidArgument(
        "page_token is not a token this server issued", reason=Reason.INVALID_PAGE_TOKEN
    )


def encode_page_token(after: str, filter_text: str) -> str:
    raw = json.dumps({"v": 1, "a": after, "f": filter_text}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, filter_text: str) -> str | None:
    """The position after which the next page starts, or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        after = data["a"]
        ok = data.get("v") == 1 and isinstance(after, str) and isinstance(data.get("f"), str)
    except (ValueError, binascii.Error, KeyError, TypeError, UnicodeError):
        ok = False
    if not ok:
        raise _not_issued()
    if data["f"] != filter_text:
        raise InvalidArgument(
            "page_token was issued for a different filter; start again without a token",
            reason=Reason.INVALID_PAGE_TOKEN,
        )
    return str(after)


def encode_audit_position(time: datetime, event_id: int) -> str:
    """The position of an audit event: newest first by (time, id)."""
    return f"{time.isoformat()}|{event_id}"


def decode_audit_position(position: str | None) -> tuple[datetime, int] | None:
    """(time, id) of the last event of the previous page, from a page token's position."""
    if position is None:
        return None
    time_text, _, id_text = position.rpartition("|")
    try:
        moment = datetime.fromisoformat(time_text)
        if moment.tzinfo is None or not id_text.isdigit():
            raise ValueError(position)
    except ValueError:
        raise _not_issued() from None
    return moment, int(id_text)
