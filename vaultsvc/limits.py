"""Every size and count limit of the vault, in one place (README "Errors" lists them).

Imported by the validation rules, the template engine, the resolve path, the servicers
and the CLI; nothing else defines a limit of its own.
"""

from __future__ import annotations

from typing import Final

# ------------------------------------------------------------------ secrets and configs

MAX_VALUE_BYTES: Final = 64 * 1024
"""A secret value: 1 byte to 64 KiB of UTF-8."""

MAX_CONFIG_VALUE_BYTES: Final = 64 * 1024
"""A config value: up to 64 KiB of UTF-8."""

MAX_DESCRIPTION_CHARS: Final = 1024

MAX_ALLOWED_HOSTS: Final = 100
"""Entries of one secret's ``allowed_hosts``."""

# ------------------------------------------------------------------------------ listing

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000
MAX_FILTER_CHARS: Final = 128

# ---------------------------------------------------------------------------- templates

MAX_TEMPLATE_BYTES: Final = 1 << 20
"""A template field may hold at most 1 MiB of UTF-8."""

MAX_PROBLEMS: Final = 1000
"""At most this many problems are reported for one template (a megabyte of
``{{secret:`` would otherwise make a hundred thousand)."""

# ------------------------------------------------------------------ resolve and check

MAX_FIELDS: Final = 256
"""Fields of one ResolveTemplate / CheckTemplate request."""

MAX_PLACEHOLDERS: Final = 1000
"""Placeholders over all fields of one request."""

MAX_INPUTS: Final = 1000
"""Inputs of one ResolveTemplate request."""

MAX_TOOL_CHARS: Final = 256
"""The ``tool`` label of a resolve, as recorded in the audit trail."""

MAX_REPLY_BYTES: Final = 4 * 1024 * 1024
"""Cap on a ResolveTemplate reply: the UTF-8 bytes of every resolved field's key and value
(shared/API.md "Errors added": RESPONSE_TOO_LARGE). A tool call's HTTP request has no use
for more, and a bigger reply only costs memory while a slow client reads it."""

MAX_SUGGESTIONS: Final = 3
"""Existing names suggested for one missing secret or config in CheckTemplate."""


# ----------------------------------------------------------------------------- transport

MAX_SEND_MESSAGE_BYTES: Final = 64 * 1024 * 1024
"""The server's gRPC send limit (above any response MAX_REPLY_BYTES allows)."""

# ------------------------------------------------------------------------------ messages

MAX_LABEL_CHARS: Final = 64
"""An invalid user-supplied name is cut to this many characters when quoted."""

# ----------------------------------------------------------------------------- keys CLI

MAX_REWRAP_BATCH_SIZE: Final = 10_000
"""``keys rewrap --batch-size`` upper bound (rows per transaction)."""

#: Missing names one audit event keeps (it keeps every name found, and ``missing_count``),
#: and names an error message or ErrorInfo lists before ``and N more``.
MAX_LISTED_NAMES: Final = 20
#: ... and at most this many characters of names in one list: the message, the ErrorInfo
#: metadata and grpc-status-details-bin (base64) all carry the list, and together they must
#: stay under gRPC's 8 KiB metadata soft limit, past which calls fail at random.
MAX_LISTED_CHARS: Final = 1024

#: Tools kept per secret or config value in its usage (the most recent ones).
MAX_USAGE_TOOLS: Final = 20
