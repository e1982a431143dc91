"""The name grammar of secrets, config keys and template inputs, defined once.

The template scanner, input validation and the messages that quote the rule all use the
patterns here. The SQL ``CHECK`` constraints of the migrations cannot import Python; a
unit test reads the migration and checks it spells exactly :data:`NAME_REGEX`. Names are
unique ignoring case: the database's ``name_key`` is ``lower(name)``, which is
:func:`name_key` here (names are ASCII, so both lower-case the same way).
"""

from __future__ import annotations

import re
from typing import Final

NAME_MAX_LENGTH: Final = 128
"""Longest secret name, config key or input name, in characters."""

NAME_REGEX: Final = f"[A-Za-z][A-Za-z0-9_-]{{0,{NAME_MAX_LENGTH - 1}}}"
"""A secret name or config key: a letter, then letters, digits, ``_`` or ``-``."""

INPUT_NAME_REGEX: Final = f"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{NAME_MAX_LENGTH - 1}}}"
"""A template input name (``{{input.x}}``): also digits first and ``.`` inside."""

NAME_PATTERN: Final = re.compile(NAME_REGEX)
INPUT_NAME_PATTERN: Final = re.compile(INPUT_NAME_REGEX)

NAME_RULE: Final = f"^{NAME_REGEX}$ (a letter, then letters, digits, '_' or '-')"
"""The rule as quoted in error messages."""


def name_key(name: str) -> str:
    """The case-insensitive identity of a name (the ``name_key`` column)."""
    return name.lower()


TOOL_REGEX: Final = r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,255}"
"""A tool id (``ResolveTemplateRequest.tool``), as recorded for audit and shown by the console."""

TOOL_PATTERN: Final = re.compile(TOOL_REGEX)

SCOPE_REGEX: Final = f"(?:{NAME_REGEX})?\\*?"
"""A resolver scope: a secret name, or a name prefix followed by ``*`` (``payments_*``; ``*``
alone is every secret)."""

SCOPE_PATTERN: Final = re.compile(SCOPE_REGEX)


def scope_allows(scopes: tuple[str, ...], name: str) -> bool:
    """Does a resolver with ``scopes`` (empty: every secret) may use secret ``name``?
    Compared ignoring case, as names are."""
    if not scopes:
        return True
    key = name_key(name)
    for scope in scopes:
        pattern = name_key(scope)
        if pattern.endswith("*"):
            if key.startswith(pattern[:-1]):
                return True
        elif key == pattern:
            return True
    return False
