"""Value fingerprints for IdentifySecretValue: HMAC-SHA-256 under a key derived per master key.

``fingerprint_key(K) = HKDF-SHA256(ikm=K.material, salt=None, info=FINGERPRINT_INFO)``, 32
bytes, and ``fingerprint(value) = HMAC-SHA256(fingerprint_key, value)``. The derived key is
never the master key itself (domain separation from wrapping and the key check value), and
each stored fingerprint carries the id of the master key it was derived from, so that a
candidate can be compared under every key still in the keyring while a rotation is under
way. A fingerprint is an equality oracle over values: whoever holds the derived key can test
guesses, so it is computed only in the server and compared only there.
"""

from __future__ import annotations

import hmac
from hashlib import sha256

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vaultsvc.crypto._keyring import Keyring, MasterKey

FINGERPRINT_INFO = b"vaultsvc/value-fingerprint v1"


def _derive(key: MasterKey) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=FINGERPRINT_INFO).derive(
        key.material
    )


class Fingerprinter:
    """Fingerprints values under the primary key; candidates under every key of the keyring."""

    __slots__ = ("_keys", "_primary")

    def __init__(self, keyring: Keyring) -> None:
        if not isinstance(keyring, Keyring):
            raise TypeError("Fingerprinter takes a Keyring")
        self._primary = keyring.primary.key_id
        self._keys = {key_id: _derive(keyring.get(key_id)) for key_id in keyring.ids}

    @property
    def primary_key_id(self) -> str:
        return self._primary

    def fingerprint(self, plaintext: bytes) -> tuple[str, bytes]:
        """(key id, HMAC) under the primary master key, as a new version stores it."""
        return self._primary, hmac.new(self._keys[self._primary], plaintext, sha256).digest()

    def candidates(self, plaintext: bytes) -> dict[str, bytes]:
        """The HMAC of ``plaintext`` under every key in the keyring, by key id."""
        return {key_id: hmac.new(k, plaintext, sha256).digest() for key_id, k in self._keys.items()}
