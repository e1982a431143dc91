"""Domain records and the input rules of the contract (shared/API.md)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from vaultsvc.errors import InvalidArgument

NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,127}")
MAX_VALUE_BYTES = 64 * 1024
MAX_DESCRIPTION_CHARS = 1024
MAX_CONFIG_VALUE_BYTES = 64 * 1024
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_FILTER_CHARS = 128


def safe_label(text: str, limit: int = 64) -> str:
    """A user-supplied name made safe to quote in a message or log line.

    Only used for names that failed validation (valid names are already safe): control
    characters (CR, LF, ...) become ``?`` and the text is cut to ``limit`` characters.
    """
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def validate_name(name: str, *, what: str = "name") -> str:
    if not NAME_PATTERN.fullmatch(name):
        if not name:
            raise InvalidArgument(f"{what} is required", reason="INVALID_NAME")
        raise InvalidArgument(
            f"{what} {safe_label(name)!r} is invalid: it must match "
            "^[A-Za-z][A-Za-z0-9_-]{0,127}$ (a letter, then letters, digits, '_' or '-')",
            reason="INVALID_NAME",
        )
    return name


def validate_value(value: str, *, required: bool) -> bytes | None:
    """UTF-8 bytes of a secret value, or None when an optional value was left empty."""
    if value == "":
        if required:
            raise InvalidArgument("value is required (1 byte to 64 KiB)", reason="INVALID_VALUE")
        return None
    encoded = value.encode("utf-8")
    if len(encoded) > MAX_VALUE_BYTES:
        raise InvalidArgument(
            f"value is {len(encoded)} bytes; the limit is {MAX_VALUE_BYTES} bytes",
            reason="VALUE_TOO_LARGE",
        )
    return encoded


def validate_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidArgument(
            f"description is {len(description)} characters; the limit is {MAX_DESCRIPTION_CHARS}",
            reason="DESCRIPTION_TOO_LONG",
        )
    if "\x00" in description:
        raise InvalidArgument("description must not contain NUL", reason="INVALID_DESCRIPTION")
    return description


def validate_page_size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative", reason="INVALID_PAGE_SIZE")
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


def validate_filter(text: str, what: str) -> str:
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidArgument(
            f"{what} is longer than {MAX_FILTER_CHARS} characters", reason="INVALID_FILTER"
        )
    if "\x00" in text:
        raise InvalidArgument(f"{what} must not contain NUL", reason="INVALID_FILTER")
    return text


@dataclass(frozen=True)
class SecretMeta:
    id: uuid.UUID
    name: str
    description: str
    etag: str
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class ConfigRecord:
    key: str
    value: str
    description: str
    create_time: datetime
    update_time: datetime


@dataclass
class AuditRecord:
    """One audit event. Holds names, never a value."""

    principal: str
    method: str
    request_id: str
    peer: str
    outcome: str = "OK"
    secret_names: list[str] = field(default_factory=list)
    tool: str = ""
    time: datetime | None = None
