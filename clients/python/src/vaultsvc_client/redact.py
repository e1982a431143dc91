"""Masking resolved values in logs, tool output and error text.

An executor that resolved a template holds the values it must not leak. Build
a :class:`Redactor` from them and pass every string it logs or returns through
:meth:`Redactor.redact`::

    fields = client.resolve_template(template, inputs, tool="orders").fields
    redactor = Redactor(field.value for field in fields)
    log.info("upstream said: %s", redactor.redact(response_text))

Note that a resolved *field* is the whole rendered template (a URL, a header
line...); its secret parts are masked wherever the field itself appears. Add
the raw secret values too when you have them (``redactor.add(value)``).

Each value is masked in these forms:

- verbatim;
- percent-encoded (``quote(value, safe="")`` and ``quote_plus``; hex digits
  in either case), as in URLs and form bodies;
- JSON-string-escaped (``json.dumps(value)[1:-1]``, with ``ensure_ascii``
  True and False; ``\\uXXXX`` in either case);
- base64 of its UTF-8 bytes, standard and URL-safe alphabets, with and
  without ``=`` padding;
- each line of a multi-line value (a PEM key...), in all the forms above.

Limits, by design:

- Values (and lines) shorter than ``min_length`` are not masked, so trivial
  strings such as ``true`` or ``1234`` do not shred every log line.
- Only a *standalone* base64 encoding is found. base64 of a value embedded in
  a longer blob (``Basic base64(user:password)``, a JSON document encoded as a
  whole) depends on the value's offset in that blob and the bytes around it,
  so it cannot be found in general.
- A value that is part of the mask itself (``REDACTED`` with the default
  mask) cannot be told apart from the mask and is ignored.

Matching uses one compiled regular expression, longest candidate first, and
masks the union of all occurrences (overlapping ones included), so no part of
a value survives beside a mask. Redacting redacted text changes nothing.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

__all__ = ["DEFAULT_MASK", "DEFAULT_MIN_LENGTH", "RedactingFilter", "Redactor", "encodings"]

DEFAULT_MIN_LENGTH = 6
DEFAULT_MASK = "[REDACTED]"

# Occurrences can straddle a mask just inserted (mask text + the characters
# after it spelling a value again); a few passes settle that for any value
# that does not share text with the mask.
_MAX_PASSES = 4

_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNICODE_ESCAPE = re.compile(r"\\u([0-9A-Fa-f]{4})")


def _raw(value: str) -> list[str]:
    return [value]


def _percent(value: str) -> list[str]:
    return [quote(value, safe=""), quote_plus(value)]


def _json(value: str) -> list[str]:
    return [json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]]


def _base64(value: str) -> list[str]:
    data = value.encode("utf-8", "surrogatepass")
    standard = base64.b64encode(data).decode("ascii")
    urlsafe = base64.urlsafe_b64encode(data).decode("ascii")
    return [standard, standard.rstrip("="), urlsafe, urlsafe.rstrip("=")]


_ENCODERS = (("raw", _raw), ("percent", _percent), ("json", _json), ("base64", _base64))


def _forms(value: str, min_length: int) -> list[tuple[str, str]]:
    """``(kind, text)`` of every maskable form: the value and each line, each encoded."""
    forms: list[tuple[str, str]] = []
    for part in dict.fromkeys([value, *value.splitlines()]):
        if len(part) < min_length:
            continue
        for kind, encode in _ENCODERS:
            forms.extend((kind, text) for text in encode(part) if len(text) >= min_length)
    return forms


def encodings(value: str, min_length: int = DEFAULT_MIN_LENGTH) -> set[str]:
    """Every form of ``value`` a :class:`Redactor` with this ``min_length`` masks."""
    return {text for _, text in _forms(value, min_length)}


def _pattern(candidate: str, kind: str) -> str:
    """A regex for one candidate: literal, except hex digits of escapes match either case."""
    escape = {"percent": _PERCENT_ESCAPE, "json": _UNICODE_ESCAPE}.get(kind)
    if escape is None:
        return re.escape(candidate)
    parts: list[str] = []
    position = 0
    for match in escape.finditer(candidate):
        parts.append(re.escape(candidate[position : match.start(1)]))
        for digit in match.group(1):
            parts.append(f"[{digit.lower()}{digit.upper()}]" if digit.isalpha() else digit)
        position = match.end(1)
    parts.append(re.escape(candidate[position:]))
    return "".join(parts)


class Redactor:
    """Masks known values, and their common encodings, in text.

    Args:
        values: values to mask (typically what a resolve returned).
        min_length: values, lines and encodings shorter than this are left alone.
        mask: the replacement text.
    """

    def __init__(
        self,
        values: Iterable[str] = (),
        *,
        min_length: int = DEFAULT_MIN_LENGTH,
        mask: str = DEFAULT_MASK,
    ) -> None:
        if min_length < 1:
            raise ValueError("min_length must be at least 1")
        self._min_length = min_length
        self._mask = mask
        # pattern -> length of the text it matches (for longest-first ordering)
        self._patterns: dict[str, int] = {}
        self._regex: re.Pattern[str] | None = None
        for value in values:
            self.add(value)

    @property
    def mask(self) -> str:
        return self._mask

    @property
    def min_length(self) -> int:
        return self._min_length

    def add(self, value: str) -> None:
        """Also masks ``value`` (and its encodings) from now on."""
        if not isinstance(value, str):
            raise TypeError("Redactor values must be str")
        added = False
        for kind, candidate in _forms(value, self._min_length):
            if candidate in self._mask:
                continue
            pattern = _pattern(candidate, kind)
            if pattern not in self._patterns:
                self._patterns[pattern] = len(candidate)
                added = True
        if added:
            self._regex = None

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of every known value's forms replaced by the mask."""
        regex = self._compiled()
        if regex is None or not text:
            return text
        for _ in range(_MAX_PASSES):
            spans = _merged_spans(regex, text)
            if not spans:
                break
            text = self._apply(text, spans)
        return text

    __call__ = redact

    def _compiled(self) -> re.Pattern[str] | None:
        if self._regex is None and self._patterns:
            ordered = sorted(self._patterns, key=lambda p: (-self._patterns[p], p))
            # A lookahead matches at every position, so overlapping occurrences
            # are all found; the first (longest) alternative wins at each one.
            self._regex = re.compile("(?=(" + "|".join(ordered) + "))", re.DOTALL)
        return self._regex

    def _apply(self, text: str, spans: list[tuple[int, int]]) -> str:
        pieces: list[str] = []
        position = 0
        for start, end in spans:
            pieces.append(text[position:start])
            pieces.append(self._mask)
            position = end
        pieces.append(text[position:])
        return "".join(pieces)

    def logging_filter(self) -> RedactingFilter:
        """A ``logging.Filter`` that redacts each record's formatted message."""
        return RedactingFilter(self)


def _merged_spans(regex: re.Pattern[str], text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for match in regex.finditer(text):
        start = match.start()
        end = start + len(match.group(1))
        if spans and start < spans[-1][1]:
            if end > spans[-1][1]:
                spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


class RedactingFilter(logging.Filter):
    """Redacts the formatted message (and exception text) of every record it sees."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redactor.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redactor.redact(record.exc_text)
        return True
