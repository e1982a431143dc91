"""Resolve and check: templates rendered with opened secret values, or checked without
reading any value."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from vaultsvc.crypto import DecryptionFailed
from vaultsvc.domain import AuditRecord
from vaultsvc.errors import DataLoss, InvalidArgument, NotFound, Reason, ResourceExhausted
from vaultsvc.limits import (
    MAX_FIELDS,
    MAX_INPUTS,
    MAX_PLACEHOLDERS,
    MAX_RENDERED_CHARS,
    MAX_TEMPLATE_BYTES,
)
from vaultsvc.storage.repository import SealedRow
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


@dataclass(frozen=True)
class FieldProblem:
    field_key: str
    kind: str  # MALFORMED_PLACEHOLDER | SECRET_NOT_FOUND | CONFIG_NOT_FOUND | INVALID_FOR_ENCODING
    placeholder: str
    name: str
    message: str
    offset: int


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
        self, fields: Sequence[Field], inputs: Mapping[str, str], audit: AuditRecord
    ) -> list[tuple[str, str]]:
        """Render every field, or fail as a whole. One database round trip at most."""
        if len(inputs) > MAX_INPUTS:
            raise ResourceExhausted(f"more than {MAX_INPUTS} inputs", reason=Reason.TOO_MANY_INPUTS)
        compiled = self._compile_all(fields)

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
        audit.secret_names = sorted(secret_names)

        if missing_inputs:
            raise InvalidArgument(
                f"input missing: {', '.join(missing_inputs)}",
                reason=Reason.INPUT_MISSING,
                metadata={"names": ",".join(missing_inputs)},
            )

        sealed: dict[str, SealedRow] = {}
        configs: dict[str, str] = {}
        if secret_names or config_keys:
            sealed, configs = await self.repo.fetch_for_resolve(
                list(secret_names), list(config_keys)
            )
        absent = sorted(
            {secret_names[k] for k in secret_names if k not in sealed or sealed[k].deleted},
            key=str.lower,
        )
        if absent:
            raise _missing_secrets(absent, sealed)
        absent_configs = sorted(config_keys[k] for k in config_keys if k not in configs)
        if absent_configs:
            raise NotFound(
                f"config not found: {', '.join(absent_configs)}",
                reason=Reason.CONFIG_NOT_FOUND,
                metadata={"names": ",".join(absent_configs)},
            )

        values: dict[str, str] = {}
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
                return configs[name.lower()]
            return inputs[name]

        # A small request can ask for a huge answer (1000 uses of a 3 MiB input): the exact
        # size is computed from the parts and refused before anything is encoded or built.
        return render_fields(
            [(f.key, t) for f, t in zip(fields, compiled, strict=True)],
            lookup,
            max_chars=MAX_RENDERED_CHARS,
        )

    async def check(
        self, fields: Sequence[Field]
    ) -> tuple[list[FieldReferences], list[FieldProblem]]:
        """What each field references and what is wrong, without reading any value.

        References and missing names are reported for every valid placeholder, also in
        a field that has other problems (a malformed placeholder, a secret in a URL host).
        Problems come in field order, then by offset. One query checks every name.
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
        wanted_secrets = {p.name.lower() for _, _, p in uses if p.kind is PlaceholderKind.SECRET}
        wanted_configs = {p.name.lower() for _, _, p in uses if p.kind is PlaceholderKind.CONFIG}
        if wanted_secrets or wanted_configs:
            have_secrets, have_configs = await self.repo.existing_names(
                sorted(wanted_secrets), sorted(wanted_configs)
            )
            for index, field_key, p in uses:
                if p.kind is PlaceholderKind.SECRET and p.name.lower() not in have_secrets:
                    kind, what = "SECRET_NOT_FOUND", "secret"
                elif p.kind is PlaceholderKind.CONFIG and p.name.lower() not in have_configs:
                    kind, what = "CONFIG_NOT_FOUND", "config"
                else:
                    continue
                message = f"{field_key}: {what} not found: {p.name}"
                found.append(
                    (index, FieldProblem(field_key, kind, p.raw, p.name, message, p.start))
                )
        found.sort(key=lambda item: (item[0], item[1].offset))
        return references, [problem for _, problem in found]


def _missing_secrets(absent: list[str], sealed: Mapping[str, SealedRow]) -> NotFound:
    """One NOT_FOUND for every missing secret: ``SECRET_DELETED`` only when every one of
    them is scheduled for deletion (restorable), else ``SECRET_NOT_FOUND``."""
    if all(name.lower() in sealed for name in absent):
        return NotFound(
            f"secret scheduled for deletion (restorable until purged): {', '.join(absent)}",
            reason=Reason.SECRET_DELETED,
            metadata={"names": ",".join(absent)},
        )
    return NotFound(
        f"secret not found: {', '.join(absent)}",
        reason=Reason.SECRET_NOT_FOUND,
        metadata={"names": ",".join(absent)},
    )


def _refuse_too_many_fields(fields: Sequence[Field]) -> None:
    if len(fields) > MAX_FIELDS:
        raise ResourceExhausted(
            f"{len(fields)} fields; at most {MAX_FIELDS} per request",
            reason=Reason.TOO_MANY_FIELDS,
        )


def _refuse_too_large(f: Field) -> None:
    if len(f.template.encode("utf-8")) > MAX_TEMPLATE_BYTES:
        raise ResourceExhausted(
            f"field {f.key!r} is larger than 1 MiB", reason=Reason.TEMPLATE_TOO_LARGE
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
