"""Near-miss placeholders: template text that looks like a mistyped placeholder.

``{{secrets:x}}``, ``{{SECRET:x}}``, ``{{input:x}}``, ``{{inputs.x}}``, ``{{config.x}}``,
``{{ secret : x }}``... are not placeholders, so a resolve leaves them as literal text
(the contract says so) and the tool sends the braces instead of the value. Here they are
found, each with the placeholder it almost is, for CheckTemplate's warnings and for
``ResolveTemplateRequest.strict``.

Only templates are scanned, never values. Text that the placeholder scanner reads as a
placeholder (valid or malformed) is not a near miss. The scan is one regular expression
whose repetitions are all bounded, so it stays linear in the template length.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final

from vaultsvc.limits import MAX_PROBLEMS
from vaultsvc.names import NAME_MAX_LENGTH
from vaultsvc.templates.compiler import CACHEABLE_TEMPLATE_LENGTH

# A word like one of the three prefixes (any case, with or without a plural 's'), a ':'
# or '.' with optional spaces around it, a name, optional spaces, '}}'.
_NEAR_MISS: Final = re.compile(
    r"\{\{[ \t]{0,16}(secrets?|configs?|inputs?)[ \t]{0,16}([:.])[ \t]{0,16}"
    rf"([A-Za-z0-9_][A-Za-z0-9_.\-]{{0,{NAME_MAX_LENGTH - 1}}})[ \t]{{0,16}}\}}\}}",
    re.IGNORECASE,
)
# What the placeholder scanner takes as the start of a placeholder (valid or malformed).
_REAL_PREFIX: Final = re.compile(r"\{\{[ \t]*(?:secret:|config:|input\.)")
_SEPARATOR: Final = {"secret": ":", "config": ":", "input": "."}


@dataclass(frozen=True, slots=True)
class NearMiss:
    """One near-miss placeholder: ``raw`` is the template text at ``offset``,
    ``suggestion`` the placeholder it was probably meant to be."""

    offset: int
    raw: str
    suggestion: str
    name: str


def _scan(template: str) -> tuple[NearMiss, ...]:
    found: list[NearMiss] = []
    for match in _NEAR_MISS.finditer(template):
        if _REAL_PREFIX.match(template, match.start()):
            continue
        kind = match.group(1).lower().removesuffix("s")
        name = match.group(3)
        found.append(
            NearMiss(
                offset=match.start(),
                raw=match.group(0),
                suggestion="{{" + kind + _SEPARATOR[kind] + name + "}}",
                name=name,
            )
        )
        if len(found) >= MAX_PROBLEMS:
            break
    return tuple(found)


_scan_cached = functools.lru_cache(maxsize=2048)(_scan)


def find_near_misses(template: str) -> tuple[NearMiss, ...]:
    """Every near-miss placeholder in ``template`` (at most MAX_PROBLEMS), in order."""
    if "{{" not in template:
        return ()
    if len(template) > CACHEABLE_TEMPLATE_LENGTH:
        return _scan(template)
    return _scan_cached(template)


def describe(miss: NearMiss) -> str:
    """The problem message: the text as written and the fix (template text, never a value)."""
    return (
        f"{miss.raw!r} is not a placeholder and is left as literal text;"
        f" did you mean {miss.suggestion}?"
    )
