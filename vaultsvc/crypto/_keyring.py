"""Master keys (KEKs): parsing, loading, generating, the keyring and key check values.

Nothing here may put key material into a message, a repr or an exception chain.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

MASTER_KEY_SIZE = 32
"""Bytes of a master key (AES-256)."""

KEY_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_KEY_ID_RE = re.compile(KEY_ID_PATTERN)

_SPEC_FORMAT = "id:base64key[,id:base64key...]"
_KCV_MESSAGE = b"vaultsvc key check value v1"
_MAX_KEY_FILE_BYTES = 4096
_B64_STANDARD_ALPHABET = frozenset(string.ascii_letters + string.digits + "+/")


class KeyringError(ValueError):
    """A master key or the keyring is misconfigured.

    The message names the key id, the entry position or the file path and says
    what to do; it never contains key material.
    """


def is_valid_key_id(key_id: object) -> bool:
    """True when ``key_id`` is a str matching ``KEY_ID_PATTERN`` (no trailing newline)."""
    return isinstance(key_id, str) and _KEY_ID_RE.fullmatch(key_id) is not None


@dataclass(frozen=True)
class MasterKey:
    """A key-encryption key. ``material`` is excluded from repr/str."""

    key_id: str
    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not is_valid_key_id(self.key_id):
            raise KeyringError(
                "invalid master key id: it must match "
                f"{KEY_ID_PATTERN} (letters, digits, '_', '.', '-'; at most 64 characters)"
            )
        if not isinstance(self.material, bytes | bytearray | memoryview):
            raise KeyringError(f"master key {self.key_id!r}: material must be bytes")
        material = bytes(self.material)
        if len(material) != MASTER_KEY_SIZE:
            raise KeyringError(
                f"master key {self.key_id!r} must be exactly {MASTER_KEY_SIZE} bytes, "
                f"got {len(material)}; generate a new key with 32 random bytes"
            )
        object.__setattr__(self, "material", material)


class Keyring:
    """Master keys by id. The first key is the primary: it wraps every new data key.

    The others only unwrap data keys written before a rotation; keep them listed
    until every stored value has been rewrapped under the primary.
    """

    __slots__ = ("_by_id", "_keys")

    def __init__(self, keys: Sequence[MasterKey]) -> None:
        keys = tuple(keys)
        if not keys:
            raise KeyringError(
                f"no master keys configured: set VAULT_MASTER_KEYS to {_SPEC_FORMAT}"
            )
        by_id: dict[str, MasterKey] = {}
        for key in keys:
            if not isinstance(key, MasterKey):
                raise TypeError(f"Keyring takes MasterKey objects, not {type(key).__name__}")
            if key.key_id in by_id:
                raise KeyringError(
                    f"master key id {key.key_id!r} is listed twice: give every key a unique id"
                )
            by_id[key.key_id] = key
        self._keys = keys
        self._by_id = by_id

    @property
    def primary(self) -> MasterKey:
        return self._keys[0]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(key.key_id for key in self._keys)

    def get(self, key_id: str) -> MasterKey:
        key = self._by_id.get(key_id)
        if key is None:
            raise KeyringError(
                f"unknown master key id {key_id!r}: add the key with this id to "
                "VAULT_MASTER_KEYS (keep retired keys listed until every value is rewrapped)"
            )
        return key

    def find(self, key_id: str) -> MasterKey | None:
        """Like ``get`` but returns None for an unknown id."""
        return self._by_id.get(key_id)

    def __contains__(self, key_id: object) -> bool:
        return isinstance(key_id, str) and key_id in self._by_id

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Keyring(ids={self.ids!r}, primary={self.primary.key_id!r})"


def decode_key_base64(text: str) -> bytes | None:
    """Decode standard or urlsafe base64, padding optional. None when malformed.

    Mixing ``+/`` with ``-_`` is accepted; both alphabets encode the same bits.
    """
    text = text.strip().rstrip("=")
    text = text.replace("-", "+").replace("_", "/")
    if not text or not set(text) <= _B64_STANDARD_ALPHABET or len(text) % 4 == 1:
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def parse_master_keys(spec: str) -> Keyring:
    """Parse ``id:base64key[,id:base64key...]`` (e.g. VAULT_MASTER_KEYS); first = primary.

    Whitespace around entries, ids and keys is ignored. Errors name the key id
    (or the 1-based entry position when the id itself is unusable) and never
    echo anything that could be key material.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise KeyringError(
            f"no master keys configured: set VAULT_MASTER_KEYS to {_SPEC_FORMAT} "
            "(32-byte keys, base64)"
        )
    keys: list[MasterKey] = []
    seen: set[str] = set()
    for position, raw_entry in enumerate(spec.split(","), start=1):
        entry = raw_entry.strip()
        if not entry:
            raise KeyringError(
                f"master key entry {position} is empty: remove the stray ',' "
                f"(format {_SPEC_FORMAT})"
            )
        key_id, colon, encoded = entry.partition(":")
        if not colon:
            raise KeyringError(
                f"master key entry {position} has no ':' between id and key (format {_SPEC_FORMAT})"
            )
        key_id = key_id.strip()
        if not is_valid_key_id(key_id):
            raise KeyringError(
                f"master key entry {position} has an invalid id: it must match "
                f"{KEY_ID_PATTERN} and come before the ':' (format {_SPEC_FORMAT})"
            )
        if key_id in seen:
            raise KeyringError(
                f"master key id {key_id!r} is listed twice: give every key a unique id"
            )
        seen.add(key_id)
        material = decode_key_base64(encoded)
        if material is None:
            raise KeyringError(
                f"master key {key_id!r} is not valid base64: "
                "give 32 random bytes in standard or urlsafe base64"
            )
        if len(material) != MASTER_KEY_SIZE:
            raise KeyringError(
                f"master key {key_id!r} must decode to exactly {MASTER_KEY_SIZE} bytes, "
                f"got {len(material)}: give 32 random bytes in base64"
            )
        keys.append(MasterKey(key_id, material))
    return Keyring(keys)


def load_key_file(path: str | os.PathLike[str]) -> bytes:
    """Read one base64 32-byte key from a file (surrounding whitespace ignored)."""
    shown = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise KeyringError(f"cannot read master key file {shown!r}: {reason}") from None
    if len(raw) > _MAX_KEY_FILE_BYTES:
        raise KeyringError(
            f"master key file {shown!r} is too large: it must hold one base64 32-byte key"
        )
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = None
    material = decode_key_base64(text) if text is not None else None
    if material is None or len(material) != MASTER_KEY_SIZE:
        raise KeyringError(
            f"master key file {shown!r} is malformed: it must hold exactly one "
            "base64-encoded 32-byte key"
        )
    return material


def generate_master_key() -> tuple[str, str]:
    """Return ``(key_id, base64_key)`` for a new random master key.

    The id is ``k`` + the UTC date + a short random suffix, e.g. ``k20250601-3fa2c1``.
    """
    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    key_id = f"k{today}-{secrets.token_hex(3)}"
    return key_id, base64.b64encode(secrets.token_bytes(MASTER_KEY_SIZE)).decode("ascii")


def key_check_value(key: MasterKey) -> bytes:
    """HMAC-SHA256(material, fixed message): identifies the key without revealing it."""
    return hmac.new(key.material, _KCV_MESSAGE, hashlib.sha256).digest()


def verify_key_check_value(key: MasterKey, kcv: bytes) -> bool:
    """Constant-time comparison of ``kcv`` with the key's check value."""
    if not isinstance(kcv, bytes | bytearray | memoryview):
        return False
    return hmac.compare_digest(key_check_value(key), bytes(kcv))
