"""Compile a template once, render it many times.

Compiling scans the placeholders, applies the encoding's rules and fixes how
each value will be written; rendering then joins pre-split literal text with
encoded values in one pass. Values are never scanned for placeholders, so an
input whose value is ``{{secret:x}}`` comes out as that text (encoded).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from vaultsvc.errors import InvalidArgument
from vaultsvc.limits import MAX_PROBLEMS, MAX_TEMPLATE_BYTES
from vaultsvc.templates.encodings import PLANNERS, PathGroup, ValueMode, encode_value
from vaultsvc.templates.model import (
    INVALID_ENCODING,
    INVALID_URL_VALUE,
    TEMPLATE_TOO_LARGE,
    Encoding,
    Placeholder,
    PlaceholderKind,
    Problem,
)
from vaultsvc.templates.scanner import scan_placeholders

CACHEABLE_TEMPLATE_LENGTH: Final = 16 * 1024
"""Only templates up to this many characters are cached, to bound the cache's memory."""

CACHE_SIZE: Final = 2048

Lookup = Callable[[PlaceholderKind, str], str]


@dataclass(frozen=True, eq=False, slots=True)
class CompiledTemplate:
    """A checked template, ready to render. Immutable and safe to share."""

    encoding: Encoding
    placeholders: tuple[Placeholder, ...]
    secret_names: tuple[str, ...]
    config_keys: tuple[str, ...]
    input_names: tuple[str, ...]
    # Literal text, or the ordinal of a placeholder in ``placeholders``.
    _parts: tuple[str | int, ...] = dataclasses.field(repr=False)
    _modes: tuple[ValueMode, ...] = dataclasses.field(repr=False)
    _dot_groups: tuple[PathGroup, ...] = dataclasses.field(repr=False)

    def render(self, lookup: Lookup, *, field: str = "") -> str:
        """Build the result, calling ``lookup`` once per distinct placeholder.

        Raises InvalidArgument (never naming a value) when a value cannot be
        written in this encoding; ``field`` prefixes the message. Whatever
        ``lookup`` raises propagates unchanged.
        """
        looked_up: dict[tuple[PlaceholderKind, str], str] = {}
        encoded: list[str] = []
        for placeholder, mode in zip(self.placeholders, self._modes, strict=True):
            key = (placeholder.kind, placeholder.name)
            value = looked_up.get(key)
            if value is None:
                value = lookup(placeholder.kind, placeholder.name)
                looked_up[key] = value
            encoded.append(encode_value(mode, value, placeholder, field))
        for group in self._dot_groups:
            self._check_path_segment(group, encoded, field)
        return "".join(encoded[part] if isinstance(part, int) else part for part in self._parts)

    def _check_path_segment(self, group: PathGroup, encoded: list[str], field: str) -> None:
        """Refuse values that make a URL path segment '.' or '..' (which would let an
        input walk the path, e.g. ``/orders/{{input.id}}/items`` with id '..').
        ``%2e`` counts as a dot, as WHATWG URL parsers treat it so."""
        text = "".join(encoded[part] if isinstance(part, int) else part for part in group)
        if text.lower().replace("%2e", ".") not in (".", ".."):
            return
        placeholder = next(self.placeholders[part] for part in group if isinstance(part, int))
        message = f"the value of {placeholder.canonical} makes a URL path segment '.' or '..'"
        raise InvalidArgument(f"{field}: {message}" if field else message, reason=INVALID_URL_VALUE)


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _utf8_length_exceeds(template: str, limit: int) -> bool:
    if len(template) > limit:
        return True
    if len(template) * 4 <= limit:
        return False
    return len(template.encode("utf-8", "surrogatepass")) > limit


def _analyse(
    template: str, encoding_number: int
) -> tuple[CompiledTemplate | None, tuple[Problem, ...]]:
    problems: list[Problem] = []
    encoding: Encoding | None
    try:
        encoding = Encoding(encoding_number)
    except ValueError:
        encoding = None
        problems.append(
            Problem(reason=INVALID_ENCODING, message=f"unknown encoding {encoding_number}")
        )
    if _utf8_length_exceeds(template, MAX_TEMPLATE_BYTES):
        problems.append(
            Problem(
                reason=TEMPLATE_TOO_LARGE,
                message=f"template is longer than {MAX_TEMPLATE_BYTES} bytes",
            )
        )
        return None, tuple(problems)
    segments = scan_placeholders(template, problems, MAX_PROBLEMS)
    if encoding is None:
        return None, tuple(problems)
    plan = PLANNERS[encoding](segments, problems)
    if problems:
        problems.sort(key=lambda problem: problem.offset)
        return None, tuple(problems[:MAX_PROBLEMS])
    placeholders: list[Placeholder] = []
    parts: list[str | int] = []
    for segment in segments:
        if isinstance(segment, Placeholder):
            parts.append(len(placeholders))
            placeholders.append(segment)
        else:
            parts.append(segment)

    def names(kind: PlaceholderKind) -> tuple[str, ...]:
        return _unique(p.name for p in placeholders if p.kind is kind)

    compiled = CompiledTemplate(
        encoding=encoding,
        placeholders=tuple(placeholders),
        secret_names=names(PlaceholderKind.SECRET),
        config_keys=names(PlaceholderKind.CONFIG),
        input_names=names(PlaceholderKind.INPUT),
        _parts=tuple(parts),
        _modes=plan.modes,
        _dot_groups=plan.dot_groups,
    )
    return compiled, ()


_analyse_cached = functools.lru_cache(maxsize=CACHE_SIZE)(_analyse)


def _analysis(
    template: str, encoding: Encoding | int
) -> tuple[CompiledTemplate | None, tuple[Problem, ...]]:
    number = int(encoding)
    if len(template) <= CACHEABLE_TEMPLATE_LENGTH:
        return _analyse_cached(template, number)
    return _analyse(template, number)


def scan_template(
    template: str, encoding: Encoding | int, *, field: str = ""
) -> tuple[CompiledTemplate | None, list[Problem]]:
    """Check a template and report every problem (for CheckTemplate).

    Returns the compiled template, or None when there is any problem. Problems
    are ordered by offset; each message is prefixed with ``field`` when given.
    """
    compiled, problems = _analysis(template, encoding)
    if not field:
        return compiled, list(problems)
    return compiled, [
        dataclasses.replace(problem, message=f"{field}: {problem.message}") for problem in problems
    ]


def find_placeholders(template: str) -> tuple[Placeholder, ...]:
    """Every valid placeholder in ``template``, in order, whatever else is wrong with it.

    For CheckTemplate, which reports references even in a field that also holds a
    malformed placeholder or breaks its encoding's rules (and so does not compile).
    Malformed placeholders are skipped; ``scan_template`` reports them.
    """
    segments = scan_placeholders(template, [], 0)
    return tuple(segment for segment in segments if isinstance(segment, Placeholder))


def compile_template(
    template: str, encoding: Encoding | int, *, field: str = ""
) -> CompiledTemplate:
    """Compile a template, raising InvalidArgument for its first problem.

    The exception's reason is that problem's reason, its message is prefixed
    with ``field`` when given, and its metadata names the field, the offset and
    the placeholder text (template text, never a value).
    """
    compiled, problems = _analysis(template, encoding)
    if compiled is not None:
        return compiled
    first = problems[0]
    metadata = {"offset": str(first.offset)}
    if field:
        metadata["field"] = field
    if first.placeholder:
        metadata["placeholder"] = first.placeholder
    raise InvalidArgument(
        f"{field}: {first.message}" if field else first.message,
        reason=first.reason,
        metadata=metadata,
    )
