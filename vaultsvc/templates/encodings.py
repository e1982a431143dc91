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
from vaultsvc.templates.hosts import whatwg_origin
from vaultsvc.templates.model import (
    INVALID_HEADER_VALUE,
    INVALID_TEMPLATE,
    INVALID_URL_ORIGIN,
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
    # A config standing for a URL's whole origin (``scheme://host[:port][/path]``)
    # or whole host (``host[:port]``): checked for that shape, then written verbatim.
    ORIGIN_BASE = enum.auto()
    ORIGIN_HOST = enum.auto()


PathGroup = tuple[str | int, ...]
"""One URL path segment: literal text and placeholder ordinals, in order."""


@dataclass(frozen=True, slots=True)
class OriginPlan:
    """Where a URL's host comes from: a literal origin (``planned`` is its WHATWG
    protocol and host), or the config at placeholder ordinal ``config`` (always the
    first placeholder: nothing else may stand before the path), preceded
    in the URL by ``prefix`` (``scheme://`` for a whole-host config, else empty)."""

    planned: tuple[str, str] | None = None
    config: int | None = None
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    modes: tuple[ValueMode, ...]
    # Path segments of a URL that hold at least one placeholder; checked at
    # render so that no value turns a segment into "." or "..".
    dot_groups: tuple[PathGroup, ...] = ()
    origin: OriginPlan | None = None


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

# Control characters that HTTP stacks mishandle: C0 except HT, DEL, NEL, and the
# Unicode line and paragraph separators (some stacks end a header line at them).
_HEADER_FORBIDDEN: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def _plan_header(segments: Sequence[Segment], problems: list[Problem]) -> Plan:
    for offset, literal in _literals_with_offsets(segments):
        bad = _HEADER_FORBIDDEN.search(literal)
        if bad is not None:
            at = offset + bad.start()
            problems.append(
                Problem(
                    reason=INVALID_TEMPLATE,
                    message=(
                        f"header template holds control character U+{ord(bad.group()):04X}"
                        f" at offset {at} (CR, LF, NUL, other C0 controls but tab, DEL,"
                        " U+0085, U+2028 and U+2029 are not allowed in a header)"
                    ),
                    offset=at,
                )
            )
            break
    return Plan(tuple(ValueMode.HEADER for _ in _placeholders(segments)))


# ------------------------------------------------------------------------ URL
#
# The template is read as a WHATWG URL parser reads it: tab, CR and LF are removed
# wherever they are, and in special schemes (http, https, ws, ...) a backslash is a
# slash. Its origin must be written 'scheme://authority', where the authority is
# literal or is one {{config:...}} standing for the whole host; or the template
# starts with one {{config:...}} standing for the whole origin. Nothing else may
# stand before the path. After rendering, the result is parsed again with a
# WHATWG-conformant parser and its host compared with the one planned here.

_TAB_OR_NEWLINE: Final = re.compile("[\t\n\r]")
_URL_DELIMITER: Final = re.compile(r"[/?#\\]")
_PATH_DELIMITER: Final = re.compile(r"[/?#\\]")
_NON_SPECIAL_AUTHORITY_END: Final = re.compile(r"[/?#]")
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_SPECIAL_SCHEMES: Final = frozenset({"http", "https", "ws", "wss", "ftp", "file"})
_AFTER_WHOLE_ORIGIN: Final = re.compile(r"(?:[?#]|/(?![/\\]))")

# Config values standing in a URL's origin: no user info, whitespace or controls.
_HOST_TEXT: Final = (
    r"(?:\[[0-9A-Fa-f:.]+\]|[^\s\x00-\x1f\x7f-\x9f\u2028\u2029/\\?#@:\[\]%]+)"
    r"(?::[0-9]{1,5})?"
)
_ORIGIN_HOST_VALUE: Final = re.compile(_HOST_TEXT)
_ORIGIN_BASE_VALUE: Final = re.compile(
    r"[A-Za-z][A-Za-z0-9+.\-]*://" + _HOST_TEXT + r"(?:/[^\s\x00-\x1f\x7f-\x9f\u2028\u2029\\?#]*)?"
)


class _Zone(enum.Enum):
    ORIGIN = enum.auto()
    PATH = enum.auto()
    QUERY = enum.auto()
    FRAGMENT = enum.auto()


def _whatwg_view(segments: Sequence[Segment]) -> list[Segment]:
    """The segments with tab, CR and LF removed from literal text, as WHATWG reads them."""
    return [s if isinstance(s, Placeholder) else _TAB_OR_NEWLINE.sub("", s) for s in segments]


def _first_delimiter(
    segments: Sequence[Segment], segment_index: int, char_index: int, pattern: re.Pattern[str]
) -> tuple[int, int] | None:
    """Position of the first literal match of ``pattern`` at or after the given one."""
    for index in range(segment_index, len(segments)):
        segment = segments[index]
        if isinstance(segment, Placeholder):
            continue
        found = pattern.search(segment, char_index if index == segment_index else 0)
        if found is not None:
            return index, found.start()
    return None


def _not_absolute(problems: list[Problem], why: str, offset: int = 0) -> None:
    problems.append(
        Problem(
            reason=INVALID_TEMPLATE,
            message=f"URL template is not an absolute URL: {why}",
            offset=offset,
        )
    )


def _offset_of(segments: Sequence[Segment], index: int) -> int:
    """Template offset where segment ``index`` starts."""
    position = 0
    for segment in segments[:index]:
        position = segment.end if isinstance(segment, Placeholder) else position + len(segment)
    return position


def _not_allowed(problems: list[Problem], placeholder: Placeholder, why: str) -> None:
    problems.append(
        Problem(
            reason=PLACEHOLDER_NOT_ALLOWED,
            message=f"{placeholder.canonical} at offset {placeholder.start} {why}",
            placeholder=placeholder.raw,
            name=placeholder.name,
            offset=placeholder.start,
        )
    )


_IN_ORIGIN: Final = (
    "is in the scheme, host or port of a URL, where only one {{config:...}} standing for"
    " the whole origin ('{{config:base}}/path') or the whole host"
    " ('https://{{config:host}}/path') is allowed"
)


def _plan_origin(
    raw: Sequence[Segment], view: Sequence[Segment], problems: list[Problem]
) -> tuple[OriginPlan, tuple[int, int] | None] | None:
    """Check the scheme and authority; return the origin plan and where the path starts
    (segment index and position in the view, None when the URL ends with the origin),
    or None when the template is refused (problems say why)."""
    count = len(problems)
    first = view[0] if view else ""
    if isinstance(first, Placeholder) and first.kind is PlaceholderKind.CONFIG:
        # A whole-origin config: what follows must start the path, query or fragment.
        if len(view) == 1:
            return OriginPlan(config=0), None
        after = view[1]
        if isinstance(after, str) and _AFTER_WHOLE_ORIGIN.match(after):
            return OriginPlan(config=0), (1, 0)
        _not_allowed(
            problems,
            first,
            "stands for the whole origin of a URL only when it is followed by '/path', '?',"
            " '#' or nothing (not by a scheme, a host, '//' or a backslash)",
        )
        if isinstance(after, Placeholder):
            _not_allowed(problems, after, _IN_ORIGIN)
        return None
    found = _first_delimiter(view, 0, 0, _URL_DELIMITER)
    if found is None:
        _not_absolute(problems, "it must start with 'scheme://' or with a {{config:...}} base URL")
        return None
    index, slash = found
    literal = view[index]
    assert isinstance(literal, str)
    if slash == 0 or literal[slash - 1] != ":":
        _not_absolute(problems, "it must start with 'scheme://' or with a {{config:...}} base URL")
        return None
    for placeholder in _placeholders(view[:index]):
        _not_allowed(problems, placeholder, _IN_ORIGIN)
    scheme = literal[: slash - 1] if index == 0 else None
    if scheme == "":
        _not_absolute(problems, "empty scheme")
    elif scheme is not None and not _SCHEME.fullmatch(scheme):
        if scheme[0].isalpha():
            _not_absolute(problems, "the scheme may hold only letters, digits, '+', '-' and '.'")
        else:
            _not_absolute(problems, "the scheme must start with a letter")
    at = _offset_of(raw, index)
    if literal[slash - 1 : slash + 2] != "://":
        _not_absolute(
            problems,
            "write the origin as 'scheme://host' (URL parsers read other forms such as"
            " 'https:/\\host' or 'https:host' as a host too)",
            at,
        )
        return None
    special = scheme is not None and scheme.lower() in _SPECIAL_SCHEMES
    authority_end = _URL_DELIMITER if special else _NON_SPECIAL_AUTHORITY_END
    start = slash + 2
    end = _first_delimiter(view, index, start, authority_end)
    end_index = len(view) if end is None else end[0]
    in_authority = _placeholders(view[index:end_index])
    if in_authority:
        host = in_authority[0]
        following = view[index + 2] if index + 2 < len(view) else None
        whole_host = (
            len(problems) == count
            and literal[start:] == ""
            and host is view[index + 1]
            and host.kind is PlaceholderKind.CONFIG
            and (
                following is None
                or (isinstance(following, str) and following[:1] in ("/", "?", "#"))
            )
        )
        if whole_host:
            assert scheme is not None
            path_start = None if following is None else (index + 2, 0)
            return OriginPlan(config=0, prefix=literal[:start]), path_start
        for placeholder in in_authority:
            _not_allowed(problems, placeholder, _IN_ORIGIN)
        return None
    if len(problems) > count:
        return None
    authority = literal[start : len(literal) if end is None else end[1]]
    if not authority:
        _not_absolute(problems, "the URL has no host after 'scheme://'", at)
        return None
    planned = whatwg_origin(literal[:start] + authority + "/")
    if planned is None:
        _not_absolute(problems, "its host or port is not valid", at)
        return None
    return OriginPlan(planned=planned), end


def _plan_url(segments: Sequence[Segment], problems: list[Problem]) -> Plan:
    """Check the URL's origin and give each placeholder its mode.

    Only a whole-origin or whole-host config goes into the origin, checked for that
    shape when rendered; every other value is percent-encoded, so no value can move
    the request to another host or add a query parameter. Path segments holding a
    placeholder are recorded for the '.'/'..' check, splitting at '/' and backslash.
    """
    placeholders = _placeholders(segments)
    view = _whatwg_view(segments)
    planned = _plan_origin(segments, view, problems)
    if planned is None:
        return Plan(tuple(ValueMode.PERCENT for _ in placeholders))
    origin, path_start = planned

    modes: list[ValueMode] = []
    groups: list[PathGroup] = []
    current: list[str | int] = []

    def close_group() -> None:
        if any(isinstance(part, int) for part in current):
            groups.append(tuple(current))
        current.clear()

    zone = _Zone.ORIGIN
    for index, segment in enumerate(view):
        if isinstance(segment, Placeholder):
            if zone is _Zone.ORIGIN:
                host_form = origin.prefix != ""
                modes.append(ValueMode.ORIGIN_HOST if host_form else ValueMode.ORIGIN_BASE)
            else:
                modes.append(ValueMode.PERCENT)
                if zone is _Zone.PATH:
                    current.append(len(modes) - 1)
            continue
        position = 0
        if zone is _Zone.ORIGIN:
            if path_start is None or path_start[0] != index:
                continue
            position = path_start[1]
            zone = _Zone.PATH
        while zone is _Zone.PATH:
            found = _PATH_DELIMITER.search(segment, position)
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
    return Plan(tuple(modes), tuple(groups), origin)


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


def _header_error(placeholder: Placeholder, field: str) -> InvalidArgument:
    return InvalidArgument(
        _with_field(
            field,
            f"the value of {placeholder.canonical} holds a control character (CR, LF, NUL,"
            " another C0 control but tab, DEL, U+0085, U+2028 or U+2029), which a header"
            " may not contain",
        ),
        reason=INVALID_HEADER_VALUE,
    )


def origin_error(mode: ValueMode, placeholder: Placeholder, field: str) -> InvalidArgument:
    if mode is ValueMode.ORIGIN_BASE:
        shape = (
            "a whole origin 'scheme://host[:port]', optionally with a path (no user info,"
            " query, fragment, backslash, whitespace or control characters)"
        )
    else:
        shape = "a host 'host[:port]' (no user info, path, whitespace or control characters)"
    return InvalidArgument(
        _with_field(field, f"the value of {placeholder.canonical} must be {shape}"),
        reason=INVALID_URL_ORIGIN,
    )


def _invalid_unicode(placeholder: Placeholder, field: str) -> InvalidArgument:
    return InvalidArgument(
        _with_field(field, f"the value of {placeholder.canonical} is not valid Unicode"),
        reason=INVALID_VALUE,
    )


def origin_of_value(mode: ValueMode, value: str, prefix: str) -> tuple[str, str] | None:
    """The WHATWG protocol and host of a whole-origin or whole-host config value, or
    None when the value does not have that shape."""
    if mode is ValueMode.ORIGIN_BASE:
        if not _ORIGIN_BASE_VALUE.fullmatch(value):
            return None
        return whatwg_origin(value)
    if not _ORIGIN_HOST_VALUE.fullmatch(value):
        return None
    return whatwg_origin(prefix + value + "/")


def check_resolved_origin(url: str, planned: tuple[str, str] | str, *, field: str = "") -> None:
    """Parse the rendered URL again as a WHATWG parser does; refuse it (INVALID_URL_ORIGIN)
    unless its protocol and host are the planned ones. Never echoes the URL."""
    expected = whatwg_origin(planned) if isinstance(planned, str) else planned
    found = whatwg_origin(url)
    if expected is not None and found == expected:
        return
    raise InvalidArgument(
        _with_field(
            field,
            "the resolved URL's host is not the one its template plans (a value changed"
            " where the URL's origin ends)",
        ),
        reason=INVALID_URL_ORIGIN,
    )


# Bytes that percent-encoding keeps (urllib.parse.quote's always-safe set).
_UNRESERVED: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"


def encoded_length(mode: ValueMode, value: str, placeholder: Placeholder, field: str) -> int:
    """The length of ``encode_value(mode, value, ...)`` without building it (for PERCENT
    and FORM, from a count of bytes; JSON is escaped in C). Raises what encoding would
    raise for a value that is not valid Unicode."""
    if mode is ValueMode.PERCENT or mode is ValueMode.FORM:
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            data = None
        if data is None:
            raise _invalid_unicode(placeholder, field)
        kept = _UNRESERVED + b" " if mode is ValueMode.FORM else _UNRESERVED
        return len(data) + 2 * len(data.translate(None, kept))
    if mode is ValueMode.JSON_STRING:
        return len(_json_string_body(value))
    return len(value)


def encode_value(
    mode: ValueMode, value: str, placeholder: Placeholder, field: str, prefix: str = ""
) -> str:
    """Encode one looked-up value for its position; raise InvalidArgument, never echoing it.

    ``prefix`` is the literal ``scheme://`` before a whole-host config (ORIGIN_HOST)."""
    if mode is ValueMode.VERBATIM:
        return value
    if mode is ValueMode.HEADER:
        if _HEADER_FORBIDDEN.search(value) is not None:
            raise _header_error(placeholder, field)
        return value
    if mode is ValueMode.ORIGIN_BASE or mode is ValueMode.ORIGIN_HOST:
        if origin_of_value(mode, value, prefix) is None:
            raise origin_error(mode, placeholder, field)
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
    raise _invalid_unicode(placeholder, field)
