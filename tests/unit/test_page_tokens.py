"""Page tokens: round trip, bound to their filter, refused when not issued by the server."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from vaultsvc.errors import InvalidArgument, Reason
from vaultsvc.vault.paging import (
    decode_audit_position,
    decode_page_token,
    encode_audit_position,
    encode_page_token,
)


def _token(payload: object) -> str:
    raw = json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("after", ["", "a", "stripe_key", "é|中\x1f", "x" * 300])
@pytest.mark.parametrize("filter_text", ["", "stripe", "sec\x1fops"])
def test_round_trip(after: str, filter_text: str) -> None:
    token = encode_page_token(after, filter_text)
    assert "=" not in token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_page_token(token, filter_text) == after


def test_empty_token_is_the_first_page() -> None:
    assert decode_page_token("", "anything") is None


def test_a_token_for_another_filter_is_refused() -> None:
    token = encode_page_token("b", "stripe")
    with pytest.raises(InvalidArgument) as info:
        decode_page_token(token, "github")
    assert info.value.reason is Reason.INVALID_PAGE_TOKEN
    assert "different filter" in info.value.message


@pytest.mark.parametrize(
    "token",
    [
        "not base64!",
        "@@@@",
        _token({"v": 2, "a": "x", "f": ""}),
        _token({"v": 1, "a": 7, "f": ""}),
        _token({"v": 1, "f": ""}),
        _token({"v": 1, "a": "x"}),
        _token({"v": 1, "a": "x", "f": None}),
        _token([1, 2, 3]),
        _token("v"),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_tampered_or_foreign_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        decode_page_token(token, "")
    assert info.value.reason is Reason.INVALID_PAGE_TOKEN
    assert info.value.message == "page_token is not a token this server issued"


def test_audit_position_round_trip() -> None:
    moment = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    position = encode_audit_position(moment, 42)
    assert decode_audit_position(position) == (moment, 42)
    assert decode_audit_position(None) is None


@pytest.mark.parametrize(
    "position", ["", "2024-05-01T12:00:00|x", "2024-05-01T12:00:00|1", "noon|1", "|1"]
)
def test_bad_audit_positions_are_refused(position: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        decode_audit_position(position)
    assert info.value.reason is Reason.INVALID_PAGE_TOKEN
