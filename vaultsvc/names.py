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
