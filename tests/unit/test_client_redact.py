"""Redactor: values and their common encodings are masked; nothing else changes."""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from vaultsvc_client.redact import RedactingFilter, Redactor, encodings

MASK = "[REDACTED]"
VALUE = 'sk_live_"9/ü+&=x'


def inside_mask(form: str) -> bool:
    """A value spelled by the mask itself cannot be masked (the documented limit)."""
    return form in MASK


def test_masks_the_value_verbatim() -> None:
    redactor = Redactor([VALUE])
    assert redactor.redact(f"token={VALUE}; again {VALUE}.") == f"token={MASK}; again {MASK}."


@pytest.mark.parametrize(
    "form",
    [
        quote(VALUE, safe=""),
        quote_plus(VALUE),
        quote(VALUE, safe="").lower(),
        json.dumps(VALUE)[1:-1],
        json.dumps(VALUE, ensure_ascii=False)[1:-1],
        json.dumps(VALUE)[1:-1].replace("\\u00fc", "\\u00FC"),
        base64.b64encode(VALUE.encode()).decode(),
        base64.b64encode(VALUE.encode()).decode().rstrip("="),
        base64.urlsafe_b64encode(VALUE.encode()).decode(),
        base64.urlsafe_b64encode(VALUE.encode()).decode().rstrip("="),
    ],
    ids=[
        "percent",
        "plus",
        "percent-lower-hex",
        "json-ascii",
        "json-utf8",
        "json-upper-hex",
        "b64",
        "b64-nopad",
        "b64url",
        "b64url-nopad",
    ],
)
def test_masks_common_encodings(form: str) -> None:
    redactor = Redactor([VALUE])
    assert redactor.redact(f"<{form}>") == f"<{MASK}>"


def test_multi_line_values_mask_each_long_line() -> None:
    pem = "-----BEGIN KEY-----\nMIIBVwIBADANBgkqhk\nabc\n-----END KEY-----\n"
    redactor = Redactor([pem])
    assert redactor.redact(pem) == MASK
    logged = "line two is MIIBVwIBADANBgkqhk and tiny abc stays"
    assert redactor.redact(logged) == f"line two is {MASK} and tiny abc stays"
    assert "-----END KEY-----" not in redactor.redact("tail -----END KEY-----")


def test_short_values_are_not_masked() -> None:
    redactor = Redactor(["true", "12345"], min_length=6)
    assert redactor.redact("true 12345") == "true 12345"
    assert Redactor(["12345"], min_length=5).redact("a 12345 b") == f"a {MASK} b"


def test_longest_match_wins_and_overlaps_merge() -> None:
    redactor = Redactor(["abcdef", "abcdefghij", "ghijklmn"])
    assert redactor.redact("xx abcdefghij yy") == f"xx {MASK} yy"
    # "abcdef" + "ghijklmn" overlap on nothing, "abcdefghij" + "ghijklmn" overlap on "ghij":
    assert redactor.redact("abcdefghijklmn") == MASK
    assert redactor.redact("aaaaaaa") == "aaaaaaa"
    assert Redactor(["aaaaaa"]).redact("aaaaaaaaa!") == f"{MASK}!"


def test_add_and_custom_mask() -> None:
    redactor = Redactor(mask="***")
    assert redactor.redact("secret-one") == "secret-one"
    redactor.add("secret-one")
    assert redactor.redact("say secret-one") == "say ***"
    assert redactor("say secret-one") == "say ***"
    assert (redactor.mask, redactor.min_length) == ("***", 6)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Redactor(min_length=0)
    with pytest.raises(TypeError):
        Redactor([b"bytes"])  # type: ignore[list-item]


def test_value_inside_the_mask_is_ignored_not_looped_on() -> None:
    redactor = Redactor(["REDACTED"])
    assert redactor.redact("a REDACTED b") == "a REDACTED b"


def test_regex_metacharacters_are_literal() -> None:
    redactor = Redactor([r"a.b*c+(d)[e]\1$"])
    assert redactor.redact("axb*c+(d)[e]\\1$") == "axb*c+(d)[e]\\1$"
    assert redactor.redact(r"<a.b*c+(d)[e]\1$>") == f"<{MASK}>"


def test_logging_filter_redacts_messages_args_and_exceptions() -> None:
    redactor = Redactor(["tok_abcdef123"])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "got %s", ("tok_abcdef123",), None)
    assert RedactingFilter(redactor).filter(record)
    assert record.getMessage() == f"got {MASK}"
    try:
        raise RuntimeError("upstream rejected tok_abcdef123")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, sys.exc_info())
    redactor.logging_filter().filter(record)
    assert record.exc_text is not None
    assert "tok_abcdef123" not in record.exc_text
    assert MASK in record.exc_text


# -- properties --------------------------------------------------------------------------

values = st.text(min_size=6, max_size=40)
surroundings = st.text(max_size=60)


@settings(max_examples=400)
@given(value=values, before=surroundings, after=surroundings, which=st.integers(0, 1000))
@example(value="ED]zzz", before="", after="zzz", which=0)
@example(value="aaaaaa", before="a", after="a", which=0)
@example(value="D][RED", before="[REDACTED][REDACTED]", after="", which=0)
def test_no_encoding_survives(value: str, before: str, after: str, which: int) -> None:
    forms = sorted(encodings(value))
    assume(not any(inside_mask(form) for form in forms))
    form = forms[which % len(forms)]
    redacted = Redactor([value]).redact(before + form + after)
    for other in forms:
        if len(other) >= 6:
            assert other not in redacted


@settings(max_examples=300)
@given(value=values, text=st.text(max_size=200))
def test_text_without_the_value_is_unchanged(value: str, text: str) -> None:
    assume(not any(form in text for form in encodings(value)))
    assert Redactor([value]).redact(text) == text


@settings(max_examples=300)
@given(
    secrets=st.lists(values, min_size=1, max_size=4),
    pieces=st.lists(st.text(max_size=20), min_size=1, max_size=5),
)
def test_redacting_twice_changes_nothing_more(secrets: list[str], pieces: list[str]) -> None:
    assume(not any(inside_mask(form) for s in secrets for form in encodings(s)))
    redactor = Redactor(secrets)
    text = "".join(p + s for p, s in zip(pieces, secrets * 5, strict=False))
    once = redactor.redact(text)
    assert redactor.redact(once) == once
    for secret in secrets:
        assert secret not in once


@given(value=st.text(max_size=5), text=st.text(max_size=50))
def test_values_under_min_length_never_change_text(value: str, text: str) -> None:
    assert Redactor([value]).redact(text) == text
