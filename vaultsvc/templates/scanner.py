"""Split a template into literal text and placeholders, in one left-to-right pass.

The scan is linear in the template length: candidates are found with one
regular expression whose only unbounded part is the run of spaces after
``{{``; a name is matched with a bounded repetition; after a malformed
placeholder the search resumes two characters further on. No character is
examined more than a bounded number of times, so a megabyte of ``{{secret:``
costs the same order of time as a megabyte of plain text.
"""

from __future__ import annotations

import re
from typing import Final

from vaultsvc.names import (
    INPUT_NAME_PATTERN,
    INPUT_NAME_REGEX,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    NAME_REGEX,
)
from vaultsvc.templates.model import MALFORMED_PLACEHOLDER, Placeholder, PlaceholderKind, Problem

MAX_NAME_LENGTH: Final = NAME_MAX_LENGTH

Segment = str | Placeholder


class PlaceholderLimitExceeded(Exception):
    """The scan met more valid placeholders than it was allowed (and stopped there)."""


_CANDIDATE: Final = re.compile(r"\{\{[ \t]*(secret:|config:|input\.)")
# The widest class any kind accepts, up to MAX_NAME_LENGTH + 1 characters so
# an over-long name is told apart from a name followed by something else.
_BODY: Final = re.compile(r"([A-Za-z0-9_.\-]{0,129})[ \t]*(\}\})?")

_KIND_BY_PREFIX: Final = {
    "secret:": PlaceholderKind.SECRET,
    "config:": PlaceholderKind.CONFIG,
    "input.": PlaceholderKind.INPUT,
}
_NAME_RULE: Final = {
    PlaceholderKind.SECRET: NAME_PATTERN,
    PlaceholderKind.CONFIG: NAME_PATTERN,
    PlaceholderKind.INPUT: INPUT_NAME_PATTERN,
}
_NAME_RULE_TEXT: Final = {
    PlaceholderKind.SECRET: NAME_REGEX,
    PlaceholderKind.CONFIG: NAME_REGEX,
    PlaceholderKind.INPUT: INPUT_NAME_REGEX,
}

# How far past ``{{`` to look for the ``}}`` that ends a malformed placeholder,
# so the problem can quote it; bounded to keep the scan linear.
_RAW_WINDOW: Final = 2 * MAX_NAME_LENGTH + 32
_MESSAGE_RAW_LIMIT: Final = 80


def scan_placeholders(
    template: str,
    problems: list[Problem],
    max_problems: int,
    max_placeholders: int | None = None,
) -> list[Segment]:
    """Return the template as alternating literal strings and placeholders.

    Malformed placeholders stay in the literal text and are reported in
    ``problems`` (at most ``max_problems`` entries in total). Limits are checked
    while scanning: at the first malformed placeholder past ``max_problems`` the
    scan stops (the rest is kept as literal text: the template is refused anyway),
    and at the first valid placeholder past ``max_placeholders`` it raises
    :class:`PlaceholderLimitExceeded`. Adjacent literal text is merged, so two
    strings never follow each other.
    """
    segments: list[Segment] = []
    literal_start = 0
    search_from = 0
    placeholders = 0
    malformed = 0
    while True:
        candidate = _CANDIDATE.search(template, search_from)
        if candidate is None:
            break
        start = candidate.start()
        kind = _KIND_BY_PREFIX[candidate.group(1)]
        body = _BODY.match(template, candidate.end())
        assert body is not None  # every group is optional
        name = body.group(1)
        why = _malformation(template, kind, name, body.end(), closed=body.group(2) is not None)
        if why is None:
            placeholders += 1
            if max_placeholders is not None and placeholders > max_placeholders:
                raise PlaceholderLimitExceeded
            end = body.end()
            if literal_start < start:
                segments.append(template[literal_start:start])
            segments.append(Placeholder(kind, name, start, end, template[start:end]))
            literal_start = search_from = end
            continue
        malformed += 1
        if malformed > max_problems:
            break
        if len(problems) < max_problems:
            raw = _malformed_raw(template, start, body.end(1))
            shown = raw if len(raw) <= _MESSAGE_RAW_LIMIT else raw[:_MESSAGE_RAW_LIMIT] + "..."
            problems.append(
                Problem(
                    reason=MALFORMED_PLACEHOLDER,
                    message=f"malformed placeholder {shown!r} at offset {start}: {why}",
                    placeholder=raw,
                    name=name[:MAX_NAME_LENGTH],
                    offset=start,
                )
            )
        search_from = start + 2
    if literal_start < len(template):
        segments.append(template[literal_start:])
    return segments


def _malformation(
    template: str, kind: PlaceholderKind, name: str, body_end: int, *, closed: bool
) -> str | None:
    """Say what is wrong with a candidate placeholder, or None when it is valid."""
    if len(name) > MAX_NAME_LENGTH:
        return f"name longer than {MAX_NAME_LENGTH} characters"
    if not name:
        if body_end == len(template):
            return "not closed with '}}'"
        return "empty name (no spaces are allowed after the prefix)"
    if not _NAME_RULE[kind].fullmatch(name):
        return f"{kind.value} name must match {_NAME_RULE_TEXT[kind]}"
    if closed:
        return None
    if body_end == len(template) or template[body_end] == "}":
        return "not closed with '}}'"
    return "expected '}}' after the name"


def _malformed_raw(template: str, start: int, name_end: int) -> str:
    """The malformed text up to its ``}}`` if one closes it nearby, else the prefix and name."""
    limit = min(len(template), start + _RAW_WINDOW)
    close = template.find("}}", name_end, limit)
    reopen = template.find("{{", name_end, limit)
    if close >= 0 and (reopen < 0 or close < reopen):
        return template[start : close + 2]
    return template[start:name_end]
