"""Per-encoding rules: what a template may look like, and how each value is inserted.

Every encoding is decided when the template is compiled: each placeholder gets
a :class:`ValueMode` from its position (for URL, the zone it sits in), so
rendering only has to encode values, never to re-read the template.
"""

from __future__ import annotations

import bisect
import enum
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, NoReturn
from urllib.parse import quote, quote_plus

from vaultsvc.errors import InvalidArgument
from vaultsvc.templates.model import (
    INVALID_HEADER_VALUE,
    INVALID_TEMPLATE,
    INVALID_VALUE,
    PLACEHOLDER_NOT_ALLOWED,
    Encoding,
    Placeholder,
    PlaceholderKind,
    Problem,
)
from vaultsvc.templates.scanner import Segment


class ValueMode(enum.Enum):
    """How one placeholder's value is written into the result."""

    VERBATIM = enum.auto()
    PERCENT = enum.auto()
    FORM = enum.auto()
    JSON_STRING = enum.auto()
    HEADER = enum.auto()


PathGroup = tuple[str | int, ...]
"""One URL path segment: literal text and placeholder ordinals, in order."""


@dataclass(frozen=True, slots=True)
class Plan:
    modes: tuple[ValueMode, ...]
    # Path segments of a URL that hold at least one placeholder; checked at
    # render so that no value turns a segment into "." or "..".
    dot_groups: tuple[PathGroup, ...] = ()


Planner = Callable[[Sequence[Segment], list[Problem]], Plan]


def _placeholders(segments: Sequence[Segment]) -> list[Placeholder]:
    return [s for s in segments if isinstance(s, Placeholder)]


def _literals_with_offsets(segments: Sequence[Segment]) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    position = 0
    for segment in segments:
        if isinstance(segment, Placeholder):
            position = segment.end
        else:
            found.append((position, segment))
            position += len(segment)
    return found


def _uniform(mode: ValueMode) -> Planner:
    def plan(segments: Sequence[Segment], problems: list[Problem]) -> Plan:
        return Plan(tuple(mode for _ in _placeholders(segments)))

    return plan


# --------------------------------------------------------------------- HEADER

_HEADER_FORBIDDEN: Final = re.compile("[\r\n\x00]")


def _plan_header(segments: Sequence[Segment], problems: list[Problem]) -> Plan:
    for offset, literal in _literals_with_offsets(segments):
        bad = _HEADER_FORBIDDEN.search(literal)
        if bad is not None:
            at = offset + bad.start()
            problems.append(
                Problem(
                    reason=INVALID_TEMPLATE,
                    message=f"header template holds CR, LF or NUL at offset {at}",
                    offset=at,
                )
            )
            break
    return Plan(tuple(ValueMode.HEADER for _ in _placeholders(segments)))


# ------------------------------------------------------------------------ URL

_URL_DELIMITER: Final = re.compile(r"[/?#]")
_SCHEME_CHARS: Final = re.compile(r"[A-Za-z0-9+.\-]*")


class _Zone(enum.Enum):
    ORIGIN = enum.auto()
    PATH = enum.auto()
    QUERY = enum.auto()
    FRAGMENT = enum.auto()


def _first_delimiter(
    segments: Sequence[Segment], segment_index: int, char_index: int
) -> tuple[int, int] | None:
    """Position of the first literal '/', '?' or '#' at or after the given one."""
    for index in range(segment_index, len(segments)):
        segment = segments[index]
        if isinstance(segment, Placeholder):
            continue
        found = _URL_DELIMITER.search(segment, char_index if index == segment_index else 0)
        if found is not None:
            return index, found.start()
    return None


def _not_absolute(problems: list[Problem], why: str) -> None:
    problems.append(
        Problem(reason=INVALID_TEMPLATE, message=f"URL template is not an absolute URL: {why}")
    )


def _check_scheme(segments: Sequence[Segment], index: int, colon: int) -> str | None:
    """Validate the scheme zone (everything before the ':' of '://'); say why not."""
    tail = segments[index]
    assert isinstance(tail, str)
    pieces: list[Segment] = [*segments[:index], tail[:colon]]
    if all(piece == "" for piece in pieces):
        return "empty scheme"
    for position, piece in enumerate(pieces):
        if isinstance(piece, Placeholder):
            continue
        if not _SCHEME_CHARS.fullmatch(piece):
            return "the scheme may hold only letters, digits, '+', '-' and '.'"
        if position == 0 and piece and not piece[0].isalpha():
            return "the scheme must start with a letter"
    return None


def _plan_url(segments: Sequence[Segment], problems: list[Problem]) -> Plan:
    """Split the URL into an origin zone and the rest, and give each placeholder its mode.

    With a literal ``scheme://`` the origin zone (scheme, userinfo, host, port)
    runs to the first literal '/', '?' or '#' after it; a template may instead
    start with a ``{{config:...}}`` base URL, whose origin zone runs to the first
    literal '/', '?' or '#'. Only config values go into the origin zone, verbatim;
    every other value is percent-encoded, so no value can move the request to
    another host or add a query parameter.
    """
    placeholders = _placeholders(segments)
    first = _first_delimiter(segments, 0, 0)
    origin_end: tuple[int, int] | None
    if first is not None and _is_scheme_separator(segments, first):
        index, slash = first
        why = _check_scheme(segments, index, slash - 1)
        if why is not None:
            _not_absolute(problems, why)
            return Plan(tuple(ValueMode.PERCENT for _ in placeholders))
        origin_end = _first_delimiter(segments, index, slash + 2)
    elif (
        segments
        and isinstance(segments[0], Placeholder)
        and segments[0].kind is PlaceholderKind.CONFIG
    ):
        origin_end = first
    else:
        _not_absolute(problems, "it must start with 'scheme://' or with a {{config:...}} base URL")
        return Plan(tuple(ValueMode.PERCENT for _ in placeholders))

    modes: list[ValueMode] = []
    groups: list[PathGroup] = []
    current: list[str | int] = []

    def close_group() -> None:
        if any(isinstance(part, int) for part in current):
            groups.append(tuple(current))
        current.clear()

    zone = _Zone.ORIGIN
    for index, segment in enumerate(segments):
        if isinstance(segment, Placeholder):
            if zone is _Zone.ORIGIN:
                if segment.kind is not PlaceholderKind.CONFIG:
                    problems.append(
                        Problem(
                            reason=PLACEHOLDER_NOT_ALLOWED,
                            message=(
                                f"{segment.canonical} at offset {segment.start} is in the"
                                " scheme, host or port of a URL, where only {{config:...}}"
                                " is allowed"
                            ),
                            placeholder=segment.raw,
                            name=segment.name,
                            offset=segment.start,
                        )
                    )
                modes.append(ValueMode.VERBATIM)
            else:
                modes.append(ValueMode.PERCENT)
                if zone is _Zone.PATH:
                    current.append(len(modes) - 1)
            continue
        position = 0
        if zone is _Zone.ORIGIN:
            if origin_end is None or origin_end[0] != index:
                continue
            position = origin_end[1]
            zone = _Zone.PATH
        while zone is _Zone.PATH:
            found = _URL_DELIMITER.search(segment, position)
            if found is None:
                current.append(segment[position:])
                break
            current.append(segment[position : found.start()])
            close_group()
            position = found.end()
            if found.group() == "?":
                zone = _Zone.QUERY
            elif found.group() == "#":
                zone = _Zone.FRAGMENT
        if zone is _Zone.QUERY and segment.find("#", position) >= 0:
            zone = _Zone.FRAGMENT
    close_group()
    return Plan(tuple(modes), tuple(groups))


def _is_scheme_separator(segments: Sequence[Segment], at: tuple[int, int]) -> bool:
    index, position = at
    segment = segments[index]
    assert isinstance(segment, str)
    return position >= 1 and segment[position - 1 : position + 2] == "://"


# ----------------------------------------------------------------------- JSON

_STRING_SPECIAL: Final = re.compile(r'[\\"]')


def _string_spans(text: str) -> tuple[list[int], list[int], list[int], list[int]]:
    """Lex JSON string literals: (opening quotes, closing quotes, escape starts, escape ends).

    Outside strings, valid JSON has no '"' other than one opening a string, so
    ``find`` jumps from string to string. An unterminated string runs to the end.
    """
    opens: list[int] = []
    closes: list[int] = []
    escape_starts: list[int] = []
    escape_ends: list[int] = []
    position = 0
    length = len(text)
    while True:
        opening = text.find('"', position)
        if opening < 0:
            break
        cursor = opening + 1
        while True:
            special = _STRING_SPECIAL.search(text, cursor)
            if special is None:
                closing = length
                break
            at = special.start()
            if text[at] == '"':
                closing = at
                break
            end = min(length, at + (6 if text[at + 1 : at + 2] == "u" else 2))
            escape_starts.append(at)
            escape_ends.append(end)
            cursor = end
        opens.append(opening)
        closes.append(closing)
        position = closing + 1
    return opens, closes, escape_starts, escape_ends


def _inside_string(
    spans: tuple[list[int], list[int], list[int], list[int]], insertion: int
) -> bool:
    """True when text inserted before ``skeleton[insertion]`` lands inside a string
    literal and not in the middle of an escape sequence."""
    opens, closes, escape_starts, escape_ends = spans
    index = bisect.bisect_left(opens, insertion) - 1
    if index < 0 or insertion > closes[index]:
        return False
    escape = bisect.bisect_left(escape_starts, insertion) - 1
    return escape < 0 or insertion >= escape_ends[escape]


class _NotJson(ValueError):
    pass


def _reject_constant(name: str) -> NoReturn:
    raise _NotJson("NaN and Infinity are not JSON")


def _ignore_number(text: str) -> None:
    return None


def _plan_json(segments: Sequence[Segment], problems: list[Problem]) -> Plan:
    """The template, with each placeholder read as an empty string, must be JSON,
    and each placeholder must sit inside a string literal (not inside an escape)."""
    pieces: list[str] = []
    insertions: list[tuple[int, Placeholder]] = []
    # Where each literal starts in the skeleton and in the template, to map a
    # JSON error position back to the template.
    literal_starts: list[int] = []
    literal_offsets: list[int] = []
    skeleton_length = 0
    template_position = 0
    for segment in segments:
        if isinstance(segment, Placeholder):
            insertions.append((skeleton_length, segment))
            template_position = segment.end
        else:
            literal_starts.append(skeleton_length)
            literal_offsets.append(template_position)
            pieces.append(segment)
            skeleton_length += len(segment)
            template_position += len(segment)
    skeleton = "".join(pieces)

    def template_offset(skeleton_position: int) -> int:
        index = bisect.bisect_right(literal_starts, skeleton_position) - 1
        if index < 0:
            return 0
        return literal_offsets[index] + skeleton_position - literal_starts[index]

    spans = _string_spans(skeleton)
    for insertion, placeholder in insertions:
        if not _inside_string(spans, insertion):
            problems.append(
                Problem(
                    reason=PLACEHOLDER_NOT_ALLOWED,
                    message=(
                        f"{placeholder.canonical} at offset {placeholder.start} must sit"
                        " inside a JSON string literal"
                    ),
                    placeholder=placeholder.raw,
                    name=placeholder.name,
                    offset=placeholder.start,
                )
            )
    try:
        json.loads(
            skeleton,
            parse_constant=_reject_constant,
            parse_int=_ignore_number,
            parse_float=_ignore_number,
        )
    except json.JSONDecodeError as exc:
        at = template_offset(exc.pos)
        problems.append(
            Problem(
                reason=INVALID_TEMPLATE,
                message=(
                    "template is not valid JSON (placeholders read as empty strings):"
                    f" {exc.msg} at offset {at}"
                ),
                offset=at,
            )
        )
    except _NotJson:
        problems.append(
            Problem(reason=INVALID_TEMPLATE, message="template is not valid JSON: NaN/Infinity")
        )
    except RecursionError:
        problems.append(
            Problem(reason=INVALID_TEMPLATE, message="template JSON is nested too deeply")
        )
    return Plan(tuple(ValueMode.JSON_STRING for _ in insertions))


PLANNERS: Final[dict[Encoding, Planner]] = {
    Encoding.UNSPECIFIED: _uniform(ValueMode.VERBATIM),
    Encoding.RAW: _uniform(ValueMode.VERBATIM),
    Encoding.URL: _plan_url,
    Encoding.HEADER: _plan_header,
    Encoding.JSON: _plan_json,
    Encoding.FORM: _uniform(ValueMode.FORM),
}


# --------------------------------------------------------------- value output


def _json_string_body(value: str) -> str:
    # U+2028/U+2029 are valid in JSON strings but end a line in older JavaScript.
    return (
        json.dumps(value, ensure_ascii=False)[1:-1]
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _with_field(field: str, message: str) -> str:
    return f"{field}: {message}" if field else message


def encode_value(mode: ValueMode, value: str, placeholder: Placeholder, field: str) -> str:
    """Encode one looked-up value for its position; raise InvalidArgument, never echoing it."""
    if mode is ValueMode.VERBATIM:
        return value
    if mode is ValueMode.HEADER:
        if _HEADER_FORBIDDEN.search(value) is not None:
            raise InvalidArgument(
                _with_field(
                    field,
                    f"the value of {placeholder.canonical} holds CR, LF or NUL,"
                    " which a header may not contain",
                ),
                reason=INVALID_HEADER_VALUE,
            )
        return value
    if mode is ValueMode.JSON_STRING:
        return _json_string_body(value)
    try:
        if mode is ValueMode.PERCENT:
            return quote(value, safe="")
        return quote_plus(value, safe="")
    except UnicodeEncodeError:
        pass
    # Raised outside the except block so the UnicodeEncodeError, which holds
    # the value, does not ride along as __context__.
    raise InvalidArgument(
        _with_field(field, f"the value of {placeholder.canonical} is not valid Unicode"),
        reason=INVALID_VALUE,
    )
