"""The vault's behaviour, independent of gRPC: secrets, configs, resolve and check.

Servicers translate protos to calls here; this layer validates, seals and opens values
(through :class:`~vaultsvc.crypto.Envelope`) and talks to the repository.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from vaultsvc.crypto import DecryptionFailed, Envelope, SealedValue, SecretContext
from vaultsvc.domain import (
    AuditRecord,
    ConfigRecord,
    SecretMeta,
    validate_description,
    validate_filter,
    validate_name,
    validate_page_size,
    validate_value,
)
from vaultsvc.errors import DataLoss, InvalidArgument, NotFound, ResourceExhausted
from vaultsvc.storage.repository import Repository, SealedRow, Sealer
from vaultsvc.templates import (
    CompiledTemplate,
    Encoding,
    Placeholder,
    PlaceholderKind,
    Problem,
    compile_template,
    find_placeholders,
    render_fields,
    scan_template,
)

_log = logging.getLogger("vaultsvc.core")

MAX_FIELDS = 256
MAX_TEMPLATE_BYTES = 1024 * 1024
MAX_PLACEHOLDERS = 1000
MAX_INPUTS = 1000
MAX_TOOL_CHARS = 256
MAX_RENDERED_CHARS = 8 * 1024 * 1024
"""Cap on the characters of all resolved fields of one response (at most 32 MiB of UTF-8,
well under the server's send limit)."""


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


# --------------------------------------------------------------------- page tokens


def encode_page_token(after: str, filter_text: str) -> str:
    raw = json.dumps({"v": 1, "a": after, "f": filter_text}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, filter_text: str) -> str | None:
    """The position after which the next page starts, or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        after = data["a"]
        ok = data.get("v") == 1 and isinstance(after, str) and isinstance(data.get("f"), str)
    except (ValueError, binascii.Error, KeyError, TypeError, UnicodeError):
        ok = False
    if not ok:
        raise InvalidArgument(
            "page_token is not a token this server issued", reason="INVALID_PAGE_TOKEN"
        )
    if data["f"] != filter_text:
        raise InvalidArgument(
            "page_token was issued for a different filter; start again without a token",
            reason="INVALID_PAGE_TOKEN",
        )
    return str(after)


# ------------------------------------------------------------------------- the vault


class Vault:
    def __init__(self, repository: Repository, envelope: Envelope) -> None:
        self.repo = repository
        self.envelope = envelope

    # ---------------------------------------------------------------- secrets

    async def create_secret(
        self, name: str, value: str, description: str, audit: AuditRecord
    ) -> SecretMeta:
        validate_name(name)
        plaintext = validate_value(value, required=True)
        validate_description(description)
        assert plaintext is not None
        audit.secret_names = [name.lower()]
        return await self.repo.create_secret(name, description, self._sealer(plaintext), audit)

    def _sealer(self, plaintext: bytes) -> Sealer:
        """Seals ``plaintext`` for the identity the repository picks inside its transaction."""
        envelope = self.envelope

        def seal(ctx: SecretContext) -> SealedValue:
            return envelope.seal(plaintext, ctx)

        return seal

    async def get_secret(self, name: str) -> SecretMeta:
        validate_name(name)
        meta = await self.repo.get_secret(name)
        if meta is None:
            raise NotFound(f"secret not found: {name}", reason="SECRET_NOT_FOUND")
        return meta

    async def list_secrets(
        self, page_size: int, page_token: str, name_contains: str
    ) -> tuple[list[SecretMeta], str, int]:
        limit = validate_page_size(page_size)
        contains = validate_filter(name_contains, "name_contains")
        after = decode_page_token(page_token, contains.lower())
        rows, total, more = await self.repo.list_secrets(contains, after, limit)
        next_token = encode_page_token(rows[-1].name.lower(), contains.lower()) if more else ""
        return rows, next_token, total

    async def update_secret(
        self,
        name: str,
        value: str | None,
        description: str | None,
        etag: str,
        audit: AuditRecord,
    ) -> SecretMeta:
        validate_name(name)
        plaintext = validate_value(value or "", required=False)
        if description is not None:
            validate_description(description)
        audit.secret_names = [name.lower()]
        seal = self._sealer(plaintext) if plaintext is not None else None
        return await self.repo.update_secret(name, etag, description, seal, audit)

    async def delete_secret(self, name: str, etag: str, audit: AuditRecord) -> None:
        validate_name(name)
        audit.secret_names = [name.lower()]
        await self.repo.delete_secret(name, etag, audit)

    async def stats(self) -> tuple[int, datetime | None]:
        return await self.repo.stats()

    # ---------------------------------------------------------------- configs

    async def put_config(
        self, key: str, value: str, description: str, audit: AuditRecord
    ) -> ConfigRecord:
        validate_name(key, what="key")
        if len(value.encode("utf-8")) > 64 * 1024:
            raise InvalidArgument("config value is larger than 64 KiB", reason="VALUE_TOO_LARGE")
        if "\x00" in value:
            raise InvalidArgument("config value must not contain NUL", reason="INVALID_VALUE")
        validate_description(description)
        return await self.repo.put_config(key, value, description, audit)

    async def get_config(self, key: str) -> ConfigRecord:
        validate_name(key, what="key")
        record = await self.repo.get_config(key)
        if record is None:
            raise NotFound(f"config value not found: {key}", reason="CONFIG_NOT_FOUND")
        return record

    async def list_configs(
        self, page_size: int, page_token: str, key_contains: str
    ) -> tuple[list[ConfigRecord], str, int]:
        limit = validate_page_size(page_size)
        contains = validate_filter(key_contains, "key_contains")
        after = decode_page_token(page_token, contains.lower())
        rows, total, more = await self.repo.list_configs(contains, after, limit)
        next_token = encode_page_token(rows[-1].key.lower(), contains.lower()) if more else ""
        return rows, next_token, total

    async def delete_config(self, key: str, audit: AuditRecord) -> None:
        validate_name(key, what="key")
        await self.repo.delete_config(key, audit)

    # ---------------------------------------------------------------- resolve

    def _compile_all(self, fields: Sequence[Field]) -> list[CompiledTemplate]:
        if not fields:
            raise InvalidArgument("at least one field is required", reason="NO_FIELDS")
        if len(fields) > MAX_FIELDS:
            raise ResourceExhausted(
                f"{len(fields)} fields; at most {MAX_FIELDS} per request", reason="TOO_MANY_FIELDS"
            )
        compiled: list[CompiledTemplate] = []
        placeholders = 0
        for f in fields:
            if len(f.template.encode("utf-8")) > MAX_TEMPLATE_BYTES:
                raise ResourceExhausted(
                    f"field {f.key!r} is larger than 1 MiB", reason="TEMPLATE_TOO_LARGE"
                )
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
                    reason="TOO_MANY_PLACEHOLDERS",
                )
            compiled.append(template)
        return compiled

    async def resolve(
        self, fields: Sequence[Field], inputs: Mapping[str, str], audit: AuditRecord
    ) -> list[tuple[str, str]]:
        """Render every field, or fail as a whole. One database round trip at most."""
        if len(inputs) > MAX_INPUTS:
            raise ResourceExhausted(f"more than {MAX_INPUTS} inputs", reason="TOO_MANY_INPUTS")
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
                reason="INPUT_MISSING",
                metadata={"names": ",".join(missing_inputs)},
            )

        sealed: dict[str, SealedRow] = {}
        configs: dict[str, str] = {}
        if secret_names or config_keys:
            sealed, configs = await self.repo.fetch_for_resolve(
                list(secret_names), list(config_keys)
            )
        absent = sorted({secret_names[k] for k in secret_names if k not in sealed}, key=str.lower)
        if absent:
            raise NotFound(
                f"secret not found: {', '.join(absent)}",
                reason="SECRET_NOT_FOUND",
                metadata={"names": ",".join(absent)},
            )
        absent_configs = sorted(config_keys[k] for k in config_keys if k not in configs)
        if absent_configs:
            raise NotFound(
                f"config not found: {', '.join(absent_configs)}",
                reason="CONFIG_NOT_FOUND",
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
                    reason="SECRET_UNREADABLE",
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
        if len(fields) > MAX_FIELDS:
            raise ResourceExhausted(
                f"{len(fields)} fields; at most {MAX_FIELDS} per request", reason="TOO_MANY_FIELDS"
            )
        references: list[FieldReferences] = []
        found: list[tuple[int, FieldProblem]] = []
        uses: list[tuple[int, str, Placeholder]] = []
        for index, f in enumerate(fields):
            if len(f.template.encode("utf-8")) > MAX_TEMPLATE_BYTES:
                raise ResourceExhausted(
                    f"field {f.key!r} is larger than 1 MiB", reason="TEMPLATE_TOO_LARGE"
                )
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
                    reason="TOO_MANY_PLACEHOLDERS",
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


def _unique(items: object) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in items:  # type: ignore[attr-defined]
        seen.setdefault(item, None)
    return tuple(seen)


_PROBLEM_KINDS = {
    "MALFORMED_PLACEHOLDER": "MALFORMED_PLACEHOLDER",
}


def _field_problem(field_key: str, problem: Problem) -> FieldProblem:
    kind = _PROBLEM_KINDS.get(problem.reason, "INVALID_FOR_ENCODING")
    return FieldProblem(
        field_key, kind, problem.placeholder, problem.name, problem.message, problem.offset
    )


__all__ = ["Encoding", "Field", "FieldProblem", "FieldReferences", "Vault"]
