"""Value types shared by the scanner, the encoders and the compiler."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from vaultsvc.errors import Reason

# The reasons a template problem can carry (names kept for the template modules).
MALFORMED_PLACEHOLDER: Final = Reason.MALFORMED_PLACEHOLDER
PLACEHOLDER_NOT_ALLOWED: Final = Reason.PLACEHOLDER_NOT_ALLOWED
INVALID_TEMPLATE: Final = Reason.INVALID_TEMPLATE
INVALID_ENCODING: Final = Reason.INVALID_ENCODING
TEMPLATE_TOO_LARGE: Final = Reason.TEMPLATE_TOO_LARGE
INVALID_HEADER_VALUE: Final = Reason.INVALID_HEADER_VALUE
INVALID_URL_VALUE: Final = Reason.INVALID_URL_VALUE
INVALID_URL_ORIGIN: Final = Reason.INVALID_URL_ORIGIN
INVALID_VALUE: Final = Reason.INVALID_VALUE


class Encoding(enum.IntEnum):
    """Mirror of the proto enum ``interakt.vault.v1.Encoding`` (same numbers)."""

    UNSPECIFIED = 0
    RAW = 1
    URL = 2
    HEADER = 3
    JSON = 4
    FORM = 5


class PlaceholderKind(enum.Enum):
    SECRET = "secret"  # noqa: S105 - a placeholder prefix, not a password
    CONFIG = "config"
    INPUT = "input"


_SEPARATOR: Final = {
    PlaceholderKind.SECRET: ":",
    PlaceholderKind.CONFIG: ":",
    PlaceholderKind.INPUT: ".",
}


@dataclass(frozen=True, slots=True)
class Placeholder:
    """One valid placeholder; ``start``/``end`` delimit ``raw`` in the template."""

    kind: PlaceholderKind
    name: str
    start: int
    end: int
    raw: str

    @property
    def canonical(self) -> str:
        """The placeholder written without inner spaces, as used in messages."""
        return "{{" + self.kind.value + _SEPARATOR[self.kind] + self.name + "}}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a template cannot be used. ``message`` never holds a value."""

    reason: Reason
    message: str
    placeholder: str = ""
    name: str = ""
    offset: int = 0
