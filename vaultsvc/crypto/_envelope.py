"""Envelope encryption of secret values; the byte layout is documented in the package."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultsvc.crypto._keyring import Keyring, MasterKey

FORMAT_VERSION = 1
"""The version byte that starts both ``ciphertext`` and ``wrapped_dek``."""

NONCE_SIZE = 12
TAG_SIZE = 16
DEK_SIZE = 32
WRAPPED_DEK_SIZE = 1 + NONCE_SIZE + DEK_SIZE + TAG_SIZE
"""61: version || nonce || AES-GCM(DEK) || tag."""
CIPHERTEXT_OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
"""29: ``len(ciphertext) == len(plaintext) + CIPHERTEXT_OVERHEAD``."""

NONCE_HARD_LIMIT = 2**32
"""NIST SP 800-38D: at most 2^32 random 96-bit nonces per key. Each seal and each
rewrap spends one nonce of the primary master key (the value nonce is under a
fresh DEK and does not count)."""
NONCE_WARN_THRESHOLD = 2**31
"""Wraps per master key at which the server should warn that rotation is due."""

VALUE_AAD_LABEL = b"vaultsvc/value"
DEK_AAD_LABEL = b"vaultsvc/dek"

_VERSION_BYTE = bytes([FORMAT_VERSION])
_MAX_VALUE_VERSION = 2**63 - 1
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_VALUE_AAD = None
"""Key of the value AAD in ``SecretContext._aad_cache`` (key ids are strings)."""


class DecryptionFailed(Exception):
    """The only error opening or rewrapping raises; it never says why."""

    _MESSAGE = "decryption failed"

    def __init__(self) -> None:
        super().__init__(self._MESSAGE)

    def __str__(self) -> str:
        return self._MESSAGE

    def __repr__(self) -> str:
        return "DecryptionFailed()"

    def __reduce__(self) -> tuple[type[DecryptionFailed], tuple[()]]:
        return (DecryptionFailed, ())


@dataclass(frozen=True)
class SecretContext:
    """The identity a sealed value is bound to through the AAD."""

    secret_id: str
    name: str
    value_version: int
    # The AADs built from this identity (not secret), by key id and ``_VALUE_AAD``: a
    # context kept with a cached row is opened many times.
    _aad_cache: dict[str | None, bytes] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        for field_name in ("secret_id", "name"):
            text = getattr(self, field_name)
            if not isinstance(text, str):
                raise TypeError(f"SecretContext.{field_name} must be str")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"SecretContext.{field_name} is not valid UTF-8") from None
        version = self.value_version
        if not isinstance(version, int) or isinstance(version, bool):
            raise TypeError("SecretContext.value_version must be int")
        if not 0 <= version <= _MAX_VALUE_VERSION:
            raise ValueError(f"SecretContext.value_version must be in 0..{_MAX_VALUE_VERSION}")


@dataclass(frozen=True)
class SealedValue:
    """Exactly what a row stores. No validation here: a damaged row must still be
    representable so that ``Envelope.open`` can reject it with DecryptionFailed."""

    key_id: str
    wrapped_dek: bytes
    ciphertext: bytes


def _encode_items(*items: bytes) -> bytes:
    return b"".join(_U32.pack(len(item)) + item for item in items)


def value_aad(ctx: SecretContext) -> bytes:
    return ctx._aad_cache.get(_VALUE_AAD) or ctx._aad_cache.setdefault(_VALUE_AAD, _value_aad(ctx))


def dek_aad(key_id: str, ctx: SecretContext) -> bytes:
    return ctx._aad_cache.get(key_id) or ctx._aad_cache.setdefault(key_id, _dek_aad(key_id, ctx))


def _value_aad(ctx: SecretContext) -> bytes:
    return _encode_items(
        VALUE_AAD_LABEL,
        _VERSION_BYTE,
        ctx.secret_id.encode("utf-8"),
        ctx.name.encode("utf-8"),
        _U64.pack(ctx.value_version),
    )


def _dek_aad(key_id: str, ctx: SecretContext) -> bytes:
    return _encode_items(
        DEK_AAD_LABEL,
        _VERSION_BYTE,
        key_id.encode("utf-8"),
        ctx.secret_id.encode("utf-8"),
        ctx.name.encode("utf-8"),
        _U64.pack(ctx.value_version),
    )


def _split(blob: object, min_size: int, exact: bool) -> tuple[bytes, bytes]:
    """Check version and length; return (nonce, AES-GCM output)."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise DecryptionFailed()
    data = bytes(blob)
    if len(data) < min_size or (exact and len(data) != min_size):
        raise DecryptionFailed()
    if data[0] != FORMAT_VERSION:
        raise DecryptionFailed()
    return data[1 : 1 + NONCE_SIZE], data[1 + NONCE_SIZE :]


def _seal_with(aead: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    return _VERSION_BYTE + nonce + aead.encrypt(nonce, plaintext, aad)


class Envelope:
    """Seal and open secret values with per-value data keys wrapped by the keyring.

    Thread-safe and stateless apart from the immutable keyring; it keeps no data
    keys and no plaintext.
    """

    __slots__ = ("_kek_aeads", "_keyring")

    def __init__(self, keyring: Keyring) -> None:
        if not isinstance(keyring, Keyring):
            raise TypeError("Envelope takes a Keyring")
        self._keyring = keyring
        self._kek_aeads: dict[str, AESGCM] = {
            key_id: AESGCM(keyring.get(key_id).material) for key_id in keyring.ids
        }

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    def seal(self, plaintext: bytes, ctx: SecretContext) -> SealedValue:
        """Encrypt under a fresh DEK wrapped by the primary master key."""
        if not isinstance(ctx, SecretContext):
            raise TypeError("seal needs a SecretContext")
        dek = AESGCM.generate_key(bit_length=DEK_SIZE * 8)
        ciphertext = _seal_with(AESGCM(dek), plaintext, value_aad(ctx))
        return SealedValue(
            key_id=self._keyring.primary.key_id,
            wrapped_dek=self._wrap(self._keyring.primary, dek, ctx),
            ciphertext=ciphertext,
        )

    def open(self, sealed: SealedValue, ctx: SecretContext) -> bytes:
        """Return the plaintext, or raise DecryptionFailed for any problem at all."""
        dek = self._unwrap(sealed, ctx)
        return self._decrypt_value(dek, sealed, ctx)

    def rewrap(self, sealed: SealedValue, ctx: SecretContext) -> SealedValue:
        """Re-wrap the DEK under the current primary; ``ciphertext`` is kept byte for byte.

        The value is authenticated first, so a damaged row raises DecryptionFailed
        instead of being carried over under the new key.
        """
        dek = self._unwrap(sealed, ctx)
        self._decrypt_value(dek, sealed, ctx)
        primary = self._keyring.primary
        return SealedValue(
            key_id=primary.key_id,
            wrapped_dek=self._wrap(primary, dek, ctx),
            ciphertext=sealed.ciphertext,
        )

    def needs_rewrap(self, sealed: SealedValue) -> bool:
        """True when the value's DEK is wrapped by a key other than the primary."""
        return sealed.key_id != self._keyring.primary.key_id

    def _wrap(self, kek: MasterKey, dek: bytes, ctx: SecretContext) -> bytes:
        return _seal_with(self._kek_aeads[kek.key_id], dek, dek_aad(kek.key_id, ctx))

    def _unwrap(self, sealed: SealedValue, ctx: SecretContext) -> bytes:
        if not isinstance(sealed, SealedValue) or not isinstance(ctx, SecretContext):
            raise DecryptionFailed()
        key_id = sealed.key_id
        aead = self._kek_aeads.get(key_id) if isinstance(key_id, str) else None
        if aead is None:
            raise DecryptionFailed()
        nonce, body = _split(sealed.wrapped_dek, WRAPPED_DEK_SIZE, exact=True)
        try:
            return aead.decrypt(nonce, body, dek_aad(key_id, ctx))
        except InvalidTag:
            raise DecryptionFailed() from None

    @staticmethod
    def _decrypt_value(dek: bytes, sealed: SealedValue, ctx: SecretContext) -> bytes:
        nonce, body = _split(sealed.ciphertext, CIPHERTEXT_OVERHEAD, exact=False)
        try:
            return AESGCM(dek).decrypt(nonce, body, value_aad(ctx))
        except InvalidTag:
            raise DecryptionFailed() from None
