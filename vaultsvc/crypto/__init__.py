"""Envelope encryption for secret values: pure, no SQL, no gRPC, no I/O but key files.

Scheme
------
Every ``Envelope.seal`` draws a fresh random 256-bit data key (DEK) and seals
the value with AES-256-GCM under it. The DEK is then wrapped with AES-256-GCM
under the keyring's *primary* master key (KEK), and the row stores that KEK's
id, so values written before a rotation still open as long as their key stays
in the keyring (``Envelope.rewrap`` moves them to the new primary without
touching the value ciphertext). DEKs live only in local variables.

Byte layout (``FORMAT_VERSION`` = 0x01; nonces are 96-bit, random, ``os.urandom``)::

    ciphertext  = 0x01 || nonce(12) || AES-256-GCM(DEK, nonce, plaintext, value_aad)
                  -> len(plaintext) + 16 (tag) + 13 bytes; empty plaintext is allowed
    wrapped_dek = 0x01 || nonce(12) || AES-256-GCM(KEK, nonce, DEK, dek_aad)
                  -> always 1 + 12 + 32 + 16 = 61 bytes
    key_id      = id of the KEK that wrapped the DEK (stored in its own column)

AAD layout: a sequence of items, each ``u32_be(len(item)) || item`` (length
prefixes, no separators, so ("a", "bc") and ("ab", "c") differ)::

    value_aad = item(b"vaultsvc/value") || item(b"\\x01") || item(utf8(secret_id))
                || item(utf8(name)) || item(u64_be(value_version))
    dek_aad   = item(b"vaultsvc/dek")   || item(b"\\x01") || item(utf8(key_id))
                || item(utf8(secret_id)) || item(utf8(name)) || item(u64_be(value_version))

The distinct labels domain-separate the two uses. Because the value is bound to
(secret_id, name, value_version) and the DEK to the same identity plus the KEK
id, moving a row's ciphertext and/or wrapped DEK onto another secret or version,
relabelling the key id, or changing any stored byte makes ``open`` fail.

Failures: anything wrong while opening or rewrapping (unknown key id, unknown
version byte, wrong length, authentication failure, ...) raises the single
opaque ``DecryptionFailed("decryption failed")``. Configuration problems raise
``KeyringError`` (a ``ValueError``) whose message names a key id, entry
position or file path, never key material.

Nonce budget: each seal and each rewrap spends one random nonce of the primary
KEK; NIST SP 800-38D caps random 96-bit nonces at ``NONCE_HARD_LIMIT`` = 2^32
per key. The server counts wraps and warns at ``NONCE_WARN_THRESHOLD`` = 2^31.

Fingerprints (``Fingerprinter``, for IdentifySecretValue): HMAC-SHA256 of the value under
HKDF-SHA256(master key, info=b"vaultsvc/value-fingerprint v1"); stored with the master key
id it was derived from. See ``_fingerprint``.

Start-up check: ``key_check_value(key)`` = HMAC-SHA256(material,
b"vaultsvc key check value v1"), stored next to the data so a wrong key is
detected before anything is written; compare with ``verify_key_check_value``.
"""

from vaultsvc.crypto._envelope import (
    CIPHERTEXT_OVERHEAD,
    FORMAT_VERSION,
    NONCE_HARD_LIMIT,
    NONCE_WARN_THRESHOLD,
    WRAPPED_DEK_SIZE,
    DecryptionFailed,
    Envelope,
    SealedValue,
    SecretContext,
)
from vaultsvc.crypto._fingerprint import Fingerprinter
from vaultsvc.crypto._keyring import (
    MASTER_KEY_SIZE,
    Keyring,
    KeyringError,
    MasterKey,
    generate_master_key,
    key_check_value,
    load_key_file,
    parse_master_keys,
    verify_key_check_value,
)

__all__ = [
    "CIPHERTEXT_OVERHEAD",
    "FORMAT_VERSION",
    "MASTER_KEY_SIZE",
    "NONCE_HARD_LIMIT",
    "NONCE_WARN_THRESHOLD",
    "WRAPPED_DEK_SIZE",
    "DecryptionFailed",
    "Envelope",
    "Fingerprinter",
    "Keyring",
    "KeyringError",
    "MasterKey",
    "SealedValue",
    "SecretContext",
    "generate_master_key",
    "key_check_value",
    "load_key_file",
    "parse_master_keys",
    "verify_key_check_value",
]
