"""Resolve and check: templates rendered with opened secret values, or checked without
reading any value."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from vaultsvc import telemetry
from vaultsvc.crypto import DecryptionFailed
from vaultsvc.domain import AuditRecord, validate_destination_host
from vaultsvc.errors import (
    DataLoss,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    listed,
)
from vaultsvc.limits import (
    MAX_FIELDS,
    MAX_INPUTS,
    MAX_LISTED_NAMES,
    MAX_PLACEHOLDERS,
    MAX_REPLY_BYTES,
    MAX_SUGGESTIONS,
    MAX_TEMPLATE_BYTES,
)
from vaultsvc.names import scope_allows
from vaultsvc.storage.repository import ConfigRow, SealedRow
from vaultsvc.templates import (
    CompiledTemplate,
    Placeholder,
    PlaceholderKind,
    Problem,
    compile_template,
    find_placeholders,
    render_fields,
    scan_template,
)
from vaultsvc.templates.hosts import host_allowed
from vaultsvc.templates.nearmiss import NearMiss, find_near_misses
from vaultsvc.templates.nearmiss import describe as describe_near_miss
from vaultsvc.vault._base import VaultBase

_log = logging.getLogger("vaultsvc.core")


@dataclass(frozen=True)
class Field:
    key: str
    template: str
    encoding: int


@dataclass(frozen=True)
class FieldReferences:
    key: str
    secret_names: tuple[str, ...]
    config_keys: tuple[str, ...]
    input_names: tuple[str, ...]


ERROR = "ERROR"
WARNING = "WARNING"


@dataclass(frozen=True)
class FieldProblem:
    field_key: str
    # MALFORMED_PLACEHOLDER | SECRET_NOT_FOUND | CONFIG_NOT_FOUND | INVALID_FOR_ENCODING
    # | NEAR_MISS_PLACEHOLDER | SECRET_NOT_ALLOWED
    kind: str
    placeholder: str
    name: str
    message: str
    offset: int
    severity: str = ERROR  # ERROR: a resolve would fail; WARNING: it resolves, probably wrongly
    suggestions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Caller:
    """Who asks, as far as resolve and check care: the role decides whether CheckTemplate
    suggests existing names (admin and viewer only: a resolver must not enumerate them);
    a resolver's scopes limit the secrets it may use (empty: all)."""

    role: str = ""
    scopes: tuple[str, ...] = ()

    @property
    def may_see_names(self) -> bool:
        return self.role in ("admin", "viewer")


def record_secret_names(audit: AuditRecord, wanted: Iterable[str], missing: Iterable[str]) -> None:
    """What an event keeps of the (lower-cased) names a call asked for: every one found,
    at most the first :data:`MAX_LISTED_NAMES` missing ones, and how many were missing."""
    absent = sorted(set(missing))
    absent_set = set(absent)
    found = [n for n in set(wanted) if n not in absent_set]
    audit.secret_names = sorted(found + absent[:MAX_LISTED_NAMES])
    audit.missing_count = len(absent)


class Resolution(VaultBase):
    def _compile_all(self, fields: Sequence[Field]) -> list[CompiledTemplate]:
        if not fields:
            raise InvalidArgument("at least one field is required", reason=Reason.NO_FIELDS)
        _refuse_too_many_fields(fields)
        compiled: list[CompiledTemplate] = []
        placeholders = 0
        for f in fields:
            _refuse_too_large(f)
            template = compile_template(
                f.template,
                f.encoding,
                field=f.key,
                max_placeholders=MAX_PLACEHOLDERS - placeholders,
            )
            placeholders += len(template.placeholders)
            if placeholders > MAX_PLACEHOLDERS:
                raise ResourceExhausted(
                    f"more than {MAX_PLACEHOLDERS} placeholders in one request",
                    reason=Reason.TOO_MANY_PLACEHOLDERS,
                )
            compiled.append(template)
        return compiled

    async def resolve(
        self,
        fields: Sequence[Field],
        inputs: Mapping[str, str],
        audit: AuditRecord,
        before_render: Callable[[int], None] | None = None,
        *,
        caller: Caller = Caller(),
        strict: bool = False,
        destination_host: str = "",
    ) -> list[tuple[str, str]]:
        """Render every field, or fail as a whole. One database round trip at most.

        ``before_render`` gets a lower bound of the reply's size before anything is
        rendered (the front door's reply budget may refuse there).

        Refusals come in the contract's order, all before any value is opened:
        INVALID_ARGUMENT (syntax, limits, encodings, near misses when ``strict``,
        ``destination_host``, missing inputs), NOT_FOUND (secrets, then configs),
        PERMISSION_DENIED (``SECRET_NOT_ALLOWED`` for the caller's scopes, then
        ``SECRET_HOST_NOT_ALLOWED`` for secrets bound to destination hosts).
        """
        if len(inputs) > MAX_INPUTS:
            raise ResourceExhausted(f"more than {MAX_INPUTS} inputs", reason=Reason.TOO_MANY_INPUTS)
        compiled = self._compile_all(fields)
        telemetry.placeholders(compiled)
        if strict:
            _refuse_near_misses(fields)
        destination = validate_destination_host(destination_host)

        secret_names: dict[str, str] = {}
        config_keys: dict[str, str] = {}
        missing_inputs: dict[str, None] = {}
        for template in compiled:
            for name in template.secret_names:
                secret_names.setdefault(name.lower(), name)
            for key in template.config_keys:
                config_keys.setdefault(key.lower(), key)
            for input_name in template.input_names:
                if input_name not in inputs:
                    missing_inputs[input_name] = None
        # Which of them exist is not known before the lookup: keep the first few.
        audit.secret_names = sorted(secret_names)[:MAX_LISTED_NAMES]

        if missing_inputs:
            raise InvalidArgument(
                f"input missing: {listed(list(missing_inputs))}",
                reason=Reason.INPUT_MISSING,
                metadata={"names": listed(list(missing_inputs), ",")},
            )

        sealed, configs = await self._sealed_rows(list(secret_names), list(config_keys))
        # A secret scheduled for deletion is missing to a resolve: never opened.
        unusable = [k for k in secret_names if k not in sealed or sealed[k].deleted]
        record_secret_names(audit, secret_names, unusable)
        absent = sorted({secret_names[k] for k in unusable}, key=str.lower)
        if absent:
            raise _missing_secrets(absent, sealed)
        absent_configs = sorted(config_keys[k] for k in config_keys if k not in configs)
        if absent_configs:
            raise NotFound(
                f"config not found: {listed(absent_configs)}",
                reason=Reason.CONFIG_NOT_FOUND,
                metadata={"names": listed(absent_configs, ",")},
            )
        # Where the request goes: each URL field's host with its configs substituted (a
        # config of the wrong shape is refused here, as rendering would), then the
        # executor's own destination.
        destinations: list[str] = []
        for f, template in zip(fields, compiled, strict=True):
            host = template.destination_host(lambda key: configs[key.lower()].value, field=f.key)
            if host is not None:
                destinations.append(host)
        if destination is not None:
            destinations.append(destination)
        _refuse_out_of_scope(sealed.values(), caller, audit.principal)
        _refuse_unbound_destinations(sealed.values(), dict.fromkeys(destinations))

        values: dict[str, str] = {}
        with telemetry.tracing.span("vault.decrypt", "secrets", len(sealed)):
            for key, row in sealed.items():
                try:
                    values[key] = self.envelope.open(row.sealed, row.context).decode("utf-8")
                except (DecryptionFailed, UnicodeDecodeError):
                    _log.error("secret failed integrity check", extra={"secret": row.name})
                    raise DataLoss(
                        f"secret {row.name} cannot be decrypted: its stored data failed the "
                        "integrity check (tampered, or wrapped under a different key)",
                        reason=Reason.SECRET_UNREADABLE,
                        metadata={"names": row.name},
                    ) from None

        def lookup(kind: PlaceholderKind, name: str) -> str:
            if kind is PlaceholderKind.SECRET:
                return values[name.lower()]
            if kind is PlaceholderKind.CONFIG:
                return configs[name.lower()].value
            return inputs[name]

        # A small request can ask for a huge answer (1000 uses of a 3 MiB input): the exact
        # length is computed from the parts and refused before anything is encoded or built
        # (characters never outnumber UTF-8 bytes); the bytes are checked once rendered.
        with telemetry.tracing.span("vault.render", "fields", len(fields)):
            rendered = render_fields(
                [(f.key, t) for f, t in zip(fields, compiled, strict=True)],
                lookup,
                max_chars=MAX_REPLY_BYTES,
                before_render=before_render,
            )
        size = sum(_utf8_length(key) + _utf8_length(value) for key, value in rendered)
        if size > MAX_REPLY_BYTES:
            raise _rendered_too_large()
        # Usage tracking: counted with the event, if the call ends OK (storage/usage.py).
        audit.used_secrets = tuple(row.id for row in sealed.values())
        audit.used_configs = tuple((key, configs[key].create_time) for key in config_keys)
        return rendered

    async def _sealed_rows(
        self, secret_keys: list[str], config_keys: list[str]
    ) -> tuple[dict[str, SealedRow], dict[str, ConfigRow]]:
        """Sealed rows and config values by lower-cased name: hits from the cache, the
        misses in ONE query (one snapshot), shared with the misses of concurrent resolves
        (:mod:`vaultsvc.vault.fetcher`) and stored back unless a change raced the read."""
        found = self.cache.lookup(secret_keys, config_keys)
        if found.missing_secrets or found.missing_configs:
            fetched_secrets, fetched_configs = await self.fetcher.fetch(
                found.missing_secrets, found.missing_configs
            )
            found.secrets.update(fetched_secrets)
            found.configs.update(fetched_configs)
        return found.secrets, found.configs

    async def check(
        self, fields: Sequence[Field], caller: Caller = Caller()
    ) -> tuple[list[FieldReferences], list[FieldProblem]]:
        """What each field references and what is wrong, without reading any value.

        References and missing names are reported for every valid placeholder, also in
        a field that has other problems (a malformed placeholder, a secret in a URL host).
        Near-miss placeholders are warnings (with the corrected text); a secret outside a
        scoped resolver's scopes is an error. Missing names carry up to 3 existing names
        close to them, for admin and viewer callers only. Problems come in field order,
        then by offset. One query checks every name, one more finds every suggestion.
        """
        _refuse_too_many_fields(fields)
        references: list[FieldReferences] = []
        found: list[tuple[int, FieldProblem]] = []
        uses: list[tuple[int, str, Placeholder]] = []
        for index, f in enumerate(fields):
            _refuse_too_large(f)
            budget = MAX_PLACEHOLDERS - len(uses)
            template, scanned = scan_template(
                f.template, f.encoding, field=f.key, max_placeholders=budget
            )
            found.extend((index, _field_problem(f.key, p)) for p in scanned)
            found.extend(
                (index, _near_miss_problem(f.key, miss)) for miss in find_near_misses(f.template)
            )
            placeholders = (
                template.placeholders
                if template is not None
                else find_placeholders(f.template, max_placeholders=budget)
            )
            if len(uses) + len(placeholders) > MAX_PLACEHOLDERS:
                raise ResourceExhausted(
                    f"more than {MAX_PLACEHOLDERS} placeholders in one request",
                    reason=Reason.TOO_MANY_PLACEHOLDERS,
                )
            secrets = _unique(p.name for p in placeholders if p.kind is PlaceholderKind.SECRET)
            configs = _unique(p.name for p in placeholders if p.kind is PlaceholderKind.CONFIG)
            inputs = _unique(p.name for p in placeholders if p.kind is PlaceholderKind.INPUT)
            references.append(FieldReferences(f.key, secrets, configs, inputs))
            uses.extend((index, f.key, p) for p in placeholders)
        for index, field_key, p in uses:
            if p.kind is PlaceholderKind.SECRET and not scope_allows(caller.scopes, p.name):
                message = f"{field_key}: secret {p.name} is outside this resolver's scopes"
                found.append(
                    (
                        index,
                        FieldProblem(
                            field_key, "SECRET_NOT_ALLOWED", p.raw, p.name, message, p.start
                        ),
                    )
                )
        wanted_secrets = {p.name.lower() for _, _, p in uses if p.kind is PlaceholderKind.SECRET}
        wanted_configs = {p.name.lower() for _, _, p in uses if p.kind is PlaceholderKind.CONFIG}
        if wanted_secrets or wanted_configs:
            have_secrets, have_configs = await self.repo.existing_names(
                sorted(wanted_secrets), sorted(wanted_configs)
            )
            missing: list[tuple[int, str, Placeholder, str]] = []
            for index, field_key, p in uses:
                if p.kind is PlaceholderKind.SECRET and p.name.lower() not in have_secrets:
                    missing.append((index, field_key, p, "s"))
                elif p.kind is PlaceholderKind.CONFIG and p.name.lower() not in have_configs:
                    missing.append((index, field_key, p, "c"))
            similar: dict[tuple[str, str], list[str]] = {}
            if missing and caller.may_see_names:
                similar = await self.repo.similar_names(
                    sorted({p.name.lower() for _, _, p, kind in missing if kind == "s"}),
                    sorted({p.name.lower() for _, _, p, kind in missing if kind == "c"}),
                    MAX_SUGGESTIONS,
                )
            for index, field_key, p, kind in missing:
                kind_name, what = (
                    ("SECRET_NOT_FOUND", "secret")
                    if kind == "s"
                    else ("CONFIG_NOT_FOUND", "config")
                )
                suggestions = tuple(similar.get((kind, p.name.lower()), ()))
                message = f"{field_key}: {what} not found: {p.name}"
                if suggestions:
                    message += f" (did you mean {', '.join(suggestions)}?)"
                found.append(
                    (
                        index,
                        FieldProblem(
                            field_key,
                            kind_name,
                            p.raw,
                            p.name,
                            message,
                            p.start,
                            suggestions=suggestions,
                        ),
                    )
                )
        found.sort(key=lambda item: (item[0], item[1].offset))
        return references, [problem for _, problem in found]


def _missing_secrets(absent: list[str], sealed: Mapping[str, SealedRow]) -> NotFound:
    """One NOT_FOUND for every missing secret: ``SECRET_DELETED`` only when every one of
    them is scheduled for deletion (restorable), else ``SECRET_NOT_FOUND``."""
    if all(name.lower() in sealed for name in absent):
        return NotFound(
            f"secret scheduled for deletion (restorable until purged): {listed(absent)}",
            reason=Reason.SECRET_DELETED,
            metadata={"names": listed(absent, ",")},
        )
    return NotFound(
        f"secret not found: {listed(absent)}",
        reason=Reason.SECRET_NOT_FOUND,
        metadata={"names": listed(absent, ",")},
    )


def _refuse_too_many_fields(fields: Sequence[Field]) -> None:
    if len(fields) > MAX_FIELDS:
        raise ResourceExhausted(
            f"{len(fields)} fields; at most {MAX_FIELDS} per request",
            reason=Reason.TOO_MANY_FIELDS,
        )


def _refuse_too_large(f: Field) -> None:
    if _utf8_length(f.template) > MAX_TEMPLATE_BYTES:
        raise ResourceExhausted(
            f"field {f.key!r} is larger than 1 MiB", reason=Reason.TEMPLATE_TOO_LARGE
        )


def _utf8_length(text: str) -> int:
    """Bytes of ``text`` in UTF-8; an ASCII string (the usual reply) is not encoded for it."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _rendered_too_large() -> ResourceExhausted:
    return ResourceExhausted(
        f"the resolved fields would be larger than {MAX_REPLY_BYTES // (1024 * 1024)} MiB "
        "(UTF-8, keys included)",
        reason=Reason.RESPONSE_TOO_LARGE,
    )


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


_PROBLEM_KINDS = {
    "MALFORMED_PLACEHOLDER": "MALFORMED_PLACEHOLDER",
}


def _field_problem(field_key: str, problem: Problem) -> FieldProblem:
    kind = _PROBLEM_KINDS.get(problem.reason, "INVALID_FOR_ENCODING")
    return FieldProblem(
        field_key, kind, problem.placeholder, problem.name, problem.message, problem.offset
    )


def _near_miss_problem(field_key: str, miss: NearMiss) -> FieldProblem:
    return FieldProblem(
        field_key,
        "NEAR_MISS_PLACEHOLDER",
        miss.raw,
        miss.name,
        f"{field_key}: {describe_near_miss(miss)}",
        miss.offset,
        severity=WARNING,
        suggestions=(miss.suggestion,),
    )


def _refuse_near_misses(fields: Sequence[Field]) -> None:
    """``strict``: text that looks like a mistyped placeholder is refused, not left literal."""
    for f in fields:
        misses = find_near_misses(f.template)
        if misses:
            first = misses[0]
            raise InvalidArgument(
                f"{f.key}: at offset {first.offset}, {describe_near_miss(first)} (strict mode"
                f" refuses near-miss placeholders; {len(misses)} in this field)",
                reason=Reason.NEAR_MISS_PLACEHOLDER,
                metadata={
                    "field": f.key,
                    "offset": str(first.offset),
                    "placeholder": first.raw,
                    "suggestion": first.suggestion,
                },
            )


def _refuse_out_of_scope(rows: Iterable[SealedRow], caller: Caller, principal: str) -> None:
    """PERMISSION_DENIED ``SECRET_NOT_ALLOWED`` naming every secret outside the caller's scopes."""
    if not caller.scopes:
        return
    refused = sorted(
        (r.name for r in rows if not scope_allows(caller.scopes, r.name)), key=str.lower
    )
    if refused:
        raise PermissionDenied(
            f"secret not allowed for principal {principal} (outside its scopes): {listed(refused)}",
            reason=Reason.SECRET_NOT_ALLOWED,
            metadata={"names": listed(refused, ",")},
        )


def _refuse_unbound_destinations(rows: Iterable[SealedRow], destinations: Iterable[str]) -> None:
    """PERMISSION_DENIED ``SECRET_HOST_NOT_ALLOWED`` unless every destination of the request
    matches the ``allowed_hosts`` of every bound secret it uses (names the secret and the
    host, never a value). A bound secret in a request without any destination is refused."""
    bound = [row for row in rows if row.allowed_hosts]
    if not bound:
        return
    hosts = list(destinations)
    for row in sorted(bound, key=lambda r: r.name.lower()):
        if not hosts:
            raise PermissionDenied(
                f"secret {row.name} is bound to destination hosts, and this request names"
                " none (no ENCODING_URL field and no destination_host)",
                reason=Reason.SECRET_HOST_NOT_ALLOWED,
                metadata={"names": row.name, "host": ""},
            )
        for host in hosts:
            if not host_allowed(host, row.allowed_hosts):
                raise PermissionDenied(
                    f"secret {row.name} may not be sent to host {host} (not in its allowed_hosts)",
                    reason=Reason.SECRET_HOST_NOT_ALLOWED,
                    metadata={"names": row.name, "host": host},
                )
