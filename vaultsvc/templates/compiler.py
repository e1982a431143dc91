"""Compile a template once, render it many times.

Compiling scans the placeholders, applies the encoding's rules and fixes how
each value will be written; rendering then joins pre-split literal text with
encoded values in one pass. Values are never scanned for placeholders, so an
input whose value is ``{{secret:x}}`` comes out as that text (encoded).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from vaultsvc.errors import InvalidArgument, Reason, ResourceExhausted
from vaultsvc.limits import MAX_PLACEHOLDERS, MAX_PROBLEMS, MAX_TEMPLATE_BYTES
from vaultsvc.templates.encodings import (
    PLANNERS,
    OriginPlan,
    PathGroup,
    ValueMode,
    check_resolved_origin,
    encode_value,
    encoded_length,
    origin_error,
    origin_of_value,
)
from vaultsvc.templates.hosts import HostError, normalise_host
from vaultsvc.templates.model import (
    INVALID_ENCODING,
    INVALID_URL_VALUE,
    TEMPLATE_TOO_LARGE,
    Encoding,
    Placeholder,
    PlaceholderKind,
    Problem,
)
from vaultsvc.templates.scanner import PlaceholderLimitExceeded, Segment, scan_placeholders

CACHEABLE_TEMPLATE_LENGTH: Final = 16 * 1024
"""Only templates up to this many characters are cached, to bound the cache's memory."""

CACHE_SIZE: Final = 2048

Lookup = Callable[[PlaceholderKind, str], str]


def _too_many_placeholders() -> ResourceExhausted:
    return ResourceExhausted(
        f"more than {MAX_PLACEHOLDERS} placeholders in one request",
        reason=Reason.TOO_MANY_PLACEHOLDERS,
    )


class _Session:
    """One request's rendering: each placeholder is looked up once, and each distinct
    (value, encoding) is measured and encoded once, whichever fields use it."""

    __slots__ = ("encoded", "lengths", "lookup", "values")

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup
        self.values: dict[tuple[PlaceholderKind, str], str] = {}
        self.lengths: dict[tuple[ValueMode, str, str], int] = {}
        self.encoded: dict[tuple[ValueMode, str, str], str] = {}

    def value(self, placeholder: Placeholder) -> str:
        key = (placeholder.kind, placeholder.name)
        value = self.values.get(key)
        if value is None:
            value = self.lookup(placeholder.kind, placeholder.name)
            self.values[key] = value
        return value

    def length(self, mode: ValueMode, placeholder: Placeholder, field: str) -> int:
        value = self.value(placeholder)
        key = (mode, value, "")
        length = self.lengths.get(key)
        if length is None:
            length = encoded_length(mode, value, placeholder, field)
            self.lengths[key] = length
        return length

    def encode(self, mode: ValueMode, placeholder: Placeholder, field: str, prefix: str) -> str:
        value = self.value(placeholder)
        key = (mode, value, prefix if mode is ValueMode.ORIGIN_HOST else "")
        encoded = self.encoded.get(key)
        if encoded is None:
            encoded = encode_value(mode, value, placeholder, field, prefix)
            self.encoded[key] = encoded
        return encoded


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
    _origin: OriginPlan | None = dataclasses.field(repr=False)
    _literal_chars: int = dataclasses.field(repr=False)
    # The normalised host of a literal origin, worked out once at compile time.
    _literal_host: str | None = dataclasses.field(repr=False, default=None)

    def render(self, lookup: Lookup, *, field: str = "") -> str:
        """Build the result, calling ``lookup`` once per distinct placeholder.

        Raises InvalidArgument (never naming a value) when a value cannot be
        written in this encoding; ``field`` prefixes the message. Whatever
        ``lookup`` raises propagates unchanged.
        """
        return self._render(_Session(lookup), field)

    def destination_host(self, config: Callable[[str], str], *, field: str = "") -> str | None:
        """The host a URL template sends to, normalised as hosts are compared
        (:mod:`vaultsvc.templates.hosts`), with a config standing for the origin or host
        read through ``config``; None for any other encoding. Needs no secret or input
        (none may stand in a URL's origin), so it is known before anything is decrypted.
        A config value of the wrong shape raises what rendering would (INVALID_URL_ORIGIN).
        """
        origin = self._origin
        if origin is None:
            return None
        if origin.config is None:
            return self._literal_host
        placeholder = self.placeholders[origin.config]
        mode = self._modes[origin.config]
        planned = origin_of_value(mode, config(placeholder.name), origin.prefix)
        if planned is None:
            raise origin_error(mode, placeholder, field)
        return _host_of(planned)

    def _size(self, session: _Session, field: str) -> int:
        """The exact length of the rendered result, without building it."""
        return self._literal_chars + sum(
            session.length(mode, placeholder, field)
            for placeholder, mode in zip(self.placeholders, self._modes, strict=True)
        )

    def _render(self, session: _Session, field: str) -> str:
        prefix = self._origin.prefix if self._origin is not None else ""
        encoded = [
            session.encode(mode, placeholder, field, prefix)
            for placeholder, mode in zip(self.placeholders, self._modes, strict=True)
        ]
        for group in self._dot_groups:
            self._check_path_segment(group, encoded, field)
        result = "".join(encoded[part] if isinstance(part, int) else part for part in self._parts)
        if self._origin is not None:
            self._check_origin(self._origin, session, result, field)
        return result

    def _check_origin(self, origin: OriginPlan, session: _Session, result: str, field: str) -> None:
        """Re-parse the result as a WHATWG parser does: its host must be the planned one."""
        planned = origin.planned
        if origin.config is not None:
            placeholder = self.placeholders[origin.config]
            mode = self._modes[origin.config]
            planned = origin_of_value(mode, session.value(placeholder), origin.prefix)
        assert planned is not None  # encode_value refused a value without an origin
        check_resolved_origin(result, planned, field=field)

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


def render_fields(
    fields: Sequence[tuple[str, CompiledTemplate]],
    lookup: Lookup,
    *,
    max_chars: int | None = None,
    before_render: Callable[[int], None] | None = None,
) -> list[tuple[str, str]]:
    """Render every field of one request: ``(key, template)`` pairs to ``(key, result)``.

    Each placeholder is looked up once and each distinct value encoded once per
    encoding, across all fields. With ``max_chars``, the exact length of all results
    together is computed from the parts first (no value is encoded for it), and over
    the cap the request is refused with RESOURCE_EXHAUSTED ``RESPONSE_TOO_LARGE``
    before anything is built. ``before_render`` is then called with that length (a
    lower bound of the UTF-8 size), e.g. to reserve memory for the reply. The key
    prefixes error messages.
    """
    session = _Session(lookup)
    if max_chars is not None or before_render is not None:
        total = 0
        for key, template in fields:
            total += template._size(session, key)
            if max_chars is not None and total > max_chars:
                raise ResourceExhausted(
                    f"the resolved fields would be longer than {max_chars} characters",
                    reason=Reason.RESPONSE_TOO_LARGE,
                )
        if before_render is not None:
            before_render(total)
    return [(key, template._render(session, key)) for key, template in fields]


def _host_of(planned: tuple[str, str]) -> str:
    """A planned origin's host, normalised as hosts are compared."""
    try:
        return normalise_host(planned[1], allow_port=True)
    except HostError:
        return planned[1]


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _utf8_length_exceeds(template: str, limit: int) -> bool:
    if len(template) > limit:
        return True
    if len(template) * 4 <= limit:
        return False
    return len(template.encode("utf-8", "surrogatepass")) > limit


def _analyse(
    template: str, encoding_number: int, max_placeholders: int | None = None
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
    segments = _scan(template, problems, MAX_PROBLEMS, max_placeholders)
    if encoding is None or len(problems) >= MAX_PROBLEMS:
        # Past MAX_PROBLEMS the scan stopped: the encoding's rules are not checked.
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
        _origin=plan.origin,
        _literal_chars=sum(len(part) for part in parts if isinstance(part, str)),
        _literal_host=(
            _host_of(plan.origin.planned)
            if plan.origin is not None and plan.origin.planned is not None
            else None
        ),
    )
    return compiled, ()


def _scan(
    template: str, problems: list[Problem], max_problems: int, max_placeholders: int | None
) -> list[Segment]:
    try:
        return scan_placeholders(template, problems, max_problems, max_placeholders)
    except PlaceholderLimitExceeded:
        pass
    raise _too_many_placeholders()


_analyse_cached = functools.lru_cache(maxsize=CACHE_SIZE)(_analyse)


def _analysis(
    template: str, encoding: Encoding | int, max_placeholders: int | None
) -> tuple[CompiledTemplate | None, tuple[Problem, ...]]:
    """Small templates come from the cache (their placeholders are then counted, which
    is cheap); large ones are scanned with the cap, stopping at the first over it."""
    number = int(encoding)
    if len(template) > CACHEABLE_TEMPLATE_LENGTH:
        return _analyse(template, number, max_placeholders)
    compiled, problems = _analyse_cached(template, number)
    if max_placeholders is not None:
        count = (
            len(compiled.placeholders) if compiled is not None else len(find_placeholders(template))
        )
        if count > max_placeholders:
            raise _too_many_placeholders()
    return compiled, problems


def scan_template(
    template: str,
    encoding: Encoding | int,
    *,
    field: str = "",
    max_placeholders: int | None = None,
) -> tuple[CompiledTemplate | None, list[Problem]]:
    """Check a template and report every problem (for CheckTemplate).

    Returns the compiled template, or None when there is any problem. Problems
    are ordered by offset; each message is prefixed with ``field`` when given.
    Scanning stops after MAX_PROBLEMS malformed placeholders. Over
    ``max_placeholders`` valid placeholders, raises ResourceExhausted
    ``TOO_MANY_PLACEHOLDERS`` as soon as the scan meets the first one too many.
    """
    compiled, problems = _analysis(template, encoding, max_placeholders)
    if not field:
        return compiled, list(problems)
    return compiled, [
        dataclasses.replace(problem, message=f"{field}: {problem.message}") for problem in problems
    ]


def find_placeholders(
    template: str, *, max_placeholders: int | None = None
) -> tuple[Placeholder, ...]:
    """Every valid placeholder in ``template``, in order, whatever else is wrong with it.

    For CheckTemplate, which reports references even in a field that also holds a
    malformed placeholder or breaks its encoding's rules (and so does not compile).
    Malformed placeholders are skipped; ``scan_template`` reports them. Like it, the
    scan stops after MAX_PROBLEMS malformed placeholders and raises ResourceExhausted
    at the first placeholder over ``max_placeholders``.
    """
    segments = _scan(template, [], MAX_PROBLEMS, max_placeholders)
    return tuple(segment for segment in segments if isinstance(segment, Placeholder))


def compile_template(
    template: str,
    encoding: Encoding | int,
    *,
    field: str = "",
    max_placeholders: int | None = None,
) -> CompiledTemplate:
    """Compile a template, raising InvalidArgument for its first problem.

    The exception's reason is that problem's reason, its message is prefixed
    with ``field`` when given, and its metadata names the field, the offset and
    the placeholder text (template text, never a value). More than
    ``max_placeholders`` placeholders: ResourceExhausted ``TOO_MANY_PLACEHOLDERS``,
    raised at the first one over, before the rest of the template is read.
    """
    compiled, problems = _analysis(template, encoding, max_placeholders)
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
