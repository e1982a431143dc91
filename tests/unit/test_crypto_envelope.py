"""Envelope: round trips, tamper detection, move integrity, rotation, format pinning."""

from __future__ import annotations

import dataclasses
import os
import pickle
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vaultsvc.crypto import (
    CIPHERTEXT_OVERHEAD,
    NONCE_HARD_LIMIT,
    NONCE_WARN_THRESHOLD,
    WRAPPED_DEK_SIZE,
    DecryptionFailed,
    Envelope,
    Keyring,
    MasterKey,
    SealedValue,
    SecretContext,
)

KEY_A = MasterKey("key-a", bytes(range(32)))
KEY_B = MasterKey("key-b", bytes(range(100, 132)))
KEY_C = MasterKey("key-c", os.urandom(32))
CTX = SecretContext("6f1c9a52-0000-4000-8000-000000000001", "db/password", 3)
OTHER_CTX = SecretContext("6f1c9a52-0000-4000-8000-000000000002", "db/user", 1)
SECRET = b"correct horse battery staple"


def envelope(*keys: MasterKey) -> Envelope:
    return Envelope(Keyring(keys))


@pytest.fixture(scope="module")
def env_ab() -> Envelope:
    return envelope(KEY_A, KEY_B)


def with_blob(sealed: SealedValue, field: str, blob: bytes) -> SealedValue:
    if field == "ciphertext":
        return dataclasses.replace(sealed, ciphertext=blob)
    assert field == "wrapped_dek"
    return dataclasses.replace(sealed, wrapped_dek=blob)


def assert_open_fails(env: Envelope, sealed: SealedValue, ctx: SecretContext) -> None:
    with pytest.raises(DecryptionFailed) as info:
        env.open(sealed, ctx)
    assert str(info.value) == "decryption failed"
    with pytest.raises(DecryptionFailed):
        env.rewrap(sealed, ctx)


# --- round trip -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(plaintext=st.binary(max_size=70_000))
@example(plaintext=b"")
@example(plaintext=b"\x00")
@example(plaintext=os.urandom(64 * 1024))
def test_round_trip_arbitrary_bytes(plaintext: bytes) -> None:
    env = envelope(KEY_A, KEY_B)
    sealed = env.seal(plaintext, CTX)
    assert sealed.key_id == "key-a"
    assert len(sealed.wrapped_dek) == WRAPPED_DEK_SIZE == 61
    assert len(sealed.ciphertext) == len(plaintext) + CIPHERTEXT_OVERHEAD
    assert sealed.ciphertext[0] == sealed.wrapped_dek[0] == 0x01
    assert env.open(sealed, CTX) == plaintext


@settings(max_examples=40, deadline=None)
@given(
    secret_id=st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    name=st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    value_version=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_round_trip_arbitrary_context(secret_id: str, name: str, value_version: int) -> None:
    env = envelope(KEY_A)
    ctx = SecretContext(secret_id, name, value_version)
    assert env.open(env.seal(SECRET, ctx), ctx) == SECRET


def test_equal_plaintexts_give_distinct_ciphertexts_and_wraps(env_ab: Envelope) -> None:
    sealed = [env_ab.seal(SECRET, CTX) for _ in range(20)]
    assert len({s.ciphertext for s in sealed}) == 20
    assert len({s.wrapped_dek for s in sealed}) == 20
    assert len({s.ciphertext[1:13] for s in sealed}) == 20
    assert all(SECRET not in s.ciphertext for s in sealed)


def test_accepts_bytes_like_rows(env_ab: Envelope) -> None:
    sealed = env_ab.seal(SECRET, CTX)
    wrapped, ciphertext = memoryview(sealed.wrapped_dek), bytearray(sealed.ciphertext)
    as_memoryview = SealedValue(sealed.key_id, wrapped, ciphertext)  # type: ignore[arg-type]
    assert env_ab.open(as_memoryview, CTX) == SECRET


# --- every byte matters ---------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", [b"", SECRET])
@pytest.mark.parametrize("field", ["ciphertext", "wrapped_dek"])
def test_flipping_any_byte_fails(env_ab: Envelope, plaintext: bytes, field: str) -> None:
    sealed = env_ab.seal(plaintext, CTX)
    blob: bytes = getattr(sealed, field)
    checked = 0
    for position in range(len(blob)):
        for mask in (0x01, 0xFF):
            mutated = bytearray(blob)
            mutated[position] ^= mask
            tampered = with_blob(sealed, field, bytes(mutated))
            assert_open_fails(env_ab, tampered, CTX)
            checked += 1
    assert checked == 2 * len(blob) >= 2 * CIPHERTEXT_OVERHEAD
    assert env_ab.open(sealed, CTX) == plaintext


@pytest.mark.parametrize("field", ["ciphertext", "wrapped_dek"])
def test_truncating_or_extending_fails(env_ab: Envelope, field: str) -> None:
    sealed = env_ab.seal(SECRET, CTX)
    blob: bytes = getattr(sealed, field)
    variants = [
        blob[:-1],
        blob[1:],
        blob + b"\x00",
        b"\x01" + blob,
        b"",
        b"\x01",
        blob[:13],
        blob[: CIPHERTEXT_OVERHEAD - 1],
    ]
    for variant in variants:
        assert_open_fails(env_ab, with_blob(sealed, field, variant), CTX)


def test_unknown_version_byte_fails_even_when_everything_else_is_right(env_ab: Envelope) -> None:
    sealed = env_ab.seal(SECRET, CTX)
    for version in (0x00, 0x02, 0xFF):
        assert_open_fails(
            env_ab,
            dataclasses.replace(sealed, ciphertext=bytes([version]) + sealed.ciphertext[1:]),
            CTX,
        )
        assert_open_fails(
            env_ab,
            dataclasses.replace(sealed, wrapped_dek=bytes([version]) + sealed.wrapped_dek[1:]),
            CTX,
        )


def test_changing_key_id_fails(env_ab: Envelope) -> None:
    sealed = env_ab.seal(SECRET, CTX)
    for key_id in ("key-b", "key-unknown", "", "key-a ", "KEY-A"):
        assert_open_fails(env_ab, dataclasses.replace(sealed, key_id=key_id), CTX)


def test_key_id_is_bound_even_if_two_ids_hold_the_same_material() -> None:
    alias = MasterKey("key-alias", KEY_A.material)
    env = envelope(KEY_A, alias)
    sealed = env.seal(SECRET, CTX)
    assert_open_fails(env, dataclasses.replace(sealed, key_id="key-alias"), CTX)


def test_garbage_rows_fail_opaquely(env_ab: Envelope) -> None:
    sealed = env_ab.seal(SECRET, CTX)
    garbage: list[SealedValue] = [
        SealedValue(None, sealed.wrapped_dek, sealed.ciphertext),  # type: ignore[arg-type]
        SealedValue(sealed.key_id, None, sealed.ciphertext),  # type: ignore[arg-type]
        SealedValue(sealed.key_id, sealed.wrapped_dek, "text"),  # type: ignore[arg-type]
        SealedValue(["key-a"], sealed.wrapped_dek, sealed.ciphertext),  # type: ignore[arg-type]
        SealedValue("key-\ud800", sealed.wrapped_dek, sealed.ciphertext),
    ]
    for row in garbage:
        assert_open_fails(env_ab, row, CTX)
    with pytest.raises(DecryptionFailed):
        env_ab.open((sealed.key_id, sealed.wrapped_dek, sealed.ciphertext), CTX)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changed",
    [
        dataclasses.replace(CTX, secret_id="6f1c9a52-0000-4000-8000-000000000009"),
        dataclasses.replace(CTX, secret_id=""),
        dataclasses.replace(CTX, name="db/passwordx"),
        dataclasses.replace(CTX, name="DB/password"),
        dataclasses.replace(CTX, value_version=2),
        dataclasses.replace(CTX, value_version=4),
        dataclasses.replace(CTX, value_version=3 + 2**32),
    ],
    ids=["id", "empty-id", "name-suffix", "name-case", "version-down", "version-up", "ver-wrap"],
)
def test_changing_any_context_field_fails(env_ab: Envelope, changed: SecretContext) -> None:
    sealed = env_ab.seal(SECRET, CTX)
    assert_open_fails(env_ab, sealed, changed)


def test_context_fields_cannot_shift_across_boundaries(env_ab: Envelope) -> None:
    for sealed_ctx, open_ctx in [
        (SecretContext("a", "bc", 1), SecretContext("ab", "c", 1)),
        (SecretContext("ab", "c", 1), SecretContext("a", "bc", 1)),
        (SecretContext("", "abc", 1), SecretContext("abc", "", 1)),
        (SecretContext("x", "y", 1), SecretContext("y", "x", 1)),
    ]:
        assert_open_fails(env_ab, env_ab.seal(SECRET, sealed_ctx), open_ctx)


# --- move integrity ------------------------------------------------------------------------


def test_swapping_parts_between_two_secrets_fails_for_both(env_ab: Envelope) -> None:
    first = env_ab.seal(b"first value", CTX)
    second = env_ab.seal(b"second value", OTHER_CTX)
    swaps = {
        "ciphertext": (
            dataclasses.replace(first, ciphertext=second.ciphertext),
            dataclasses.replace(second, ciphertext=first.ciphertext),
        ),
        "wrapped_dek": (
            dataclasses.replace(first, wrapped_dek=second.wrapped_dek),
            dataclasses.replace(second, wrapped_dek=first.wrapped_dek),
        ),
        "both": (
            dataclasses.replace(
                first, wrapped_dek=second.wrapped_dek, ciphertext=second.ciphertext
            ),
            dataclasses.replace(second, wrapped_dek=first.wrapped_dek, ciphertext=first.ciphertext),
        ),
        "whole row": (second, first),
    }
    for label, (onto_first, onto_second) in swaps.items():
        with pytest.raises(DecryptionFailed):
            env_ab.open(onto_first, CTX)
        with pytest.raises(DecryptionFailed):
            env_ab.open(onto_second, OTHER_CTX)
        assert label
    assert env_ab.open(first, CTX) == b"first value"
    assert env_ab.open(second, OTHER_CTX) == b"second value"


def test_whole_row_moved_between_versions_of_the_same_secret_fails(env_ab: Envelope) -> None:
    v1 = SecretContext(CTX.secret_id, CTX.name, 1)
    v2 = SecretContext(CTX.secret_id, CTX.name, 2)
    old = env_ab.seal(b"old", v1)
    assert_open_fails(env_ab, old, v2)


def test_swapping_rows_sealed_under_different_master_keys_fails() -> None:
    first = envelope(KEY_A, KEY_B).seal(b"first value", CTX)
    second = envelope(KEY_B, KEY_A).seal(b"second value", OTHER_CTX)
    env = envelope(KEY_A, KEY_B)
    moved = dataclasses.replace(
        first, key_id=second.key_id, wrapped_dek=second.wrapped_dek, ciphertext=second.ciphertext
    )
    assert_open_fails(env, moved, CTX)
    assert_open_fails(env, dataclasses.replace(second, key_id=first.key_id), OTHER_CTX)
    assert_open_fails(env, dataclasses.replace(first, ciphertext=second.ciphertext), CTX)


# --- rotation --------------------------------------------------------------------------------


def test_rotation_rewrap_moves_the_dek_to_the_new_primary() -> None:
    sealed_under_a = envelope(KEY_A).seal(SECRET, CTX)
    assert sealed_under_a.key_id == "key-a"

    rotated = envelope(KEY_B, KEY_A)
    assert rotated.needs_rewrap(sealed_under_a)
    assert rotated.open(sealed_under_a, CTX) == SECRET

    rewrapped = rotated.rewrap(sealed_under_a, CTX)
    assert rewrapped.key_id == "key-b"
    assert rewrapped.ciphertext == sealed_under_a.ciphertext
    assert rewrapped.wrapped_dek != sealed_under_a.wrapped_dek
    assert len(rewrapped.wrapped_dek) == WRAPPED_DEK_SIZE
    assert not rotated.needs_rewrap(rewrapped)
    assert rotated.open(rewrapped, CTX) == SECRET

    only_b = envelope(KEY_B)
    assert only_b.open(rewrapped, CTX) == SECRET
    assert_open_fails(only_b, sealed_under_a, CTX)

    assert_open_fails(rotated, rewrapped, OTHER_CTX)
    assert_open_fails(rotated, dataclasses.replace(rewrapped, key_id="key-a"), CTX)


def test_rewrap_under_the_same_primary_is_harmless(env_ab: Envelope) -> None:
    sealed = env_ab.seal(SECRET, CTX)
    assert not env_ab.needs_rewrap(sealed)
    again = env_ab.rewrap(sealed, CTX)
    assert again.key_id == sealed.key_id
    assert again.ciphertext == sealed.ciphertext
    assert again.wrapped_dek != sealed.wrapped_dek
    assert env_ab.open(again, CTX) == SECRET


def test_new_seals_use_the_primary_after_rotation() -> None:
    assert envelope(KEY_C, KEY_A).seal(SECRET, CTX).key_id == "key-c"


# --- format pinning -------------------------------------------------------------------------


def _item(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _documented_value_aad(ctx: SecretContext) -> bytes:
    return b"".join(
        _item(part)
        for part in (
            b"vaultsvc/value",
            b"\x01",
            ctx.secret_id.encode(),
            ctx.name.encode(),
            struct.pack(">Q", ctx.value_version),
        )
    )


def _documented_dek_aad(key_id: str, ctx: SecretContext) -> bytes:
    return b"".join(
        _item(part)
        for part in (
            b"vaultsvc/dek",
            b"\x01",
            key_id.encode(),
            ctx.secret_id.encode(),
            ctx.name.encode(),
            struct.pack(">Q", ctx.value_version),
        )
    )


def _open_by_hand(kek: MasterKey, sealed: SealedValue, ctx: SecretContext) -> bytes:
    wrapped, ct = sealed.wrapped_dek, sealed.ciphertext
    assert wrapped[0] == ct[0] == 0x01
    dek = AESGCM(kek.material).decrypt(
        wrapped[1:13], wrapped[13:], _documented_dek_aad(kek.key_id, ctx)
    )
    assert len(dek) == 32
    return AESGCM(dek).decrypt(ct[1:13], ct[13:], _documented_value_aad(ctx))


def test_layout_matches_the_package_docstring(env_ab: Envelope) -> None:
    for plaintext in (b"", SECRET):
        assert _open_by_hand(KEY_A, env_ab.seal(plaintext, CTX), CTX) == plaintext


def test_hand_built_value_in_the_documented_layout_opens(env_ab: Envelope) -> None:
    dek = AESGCM.generate_key(bit_length=256)
    value_nonce, wrap_nonce = os.urandom(12), os.urandom(12)
    ciphertext = (
        b"\x01" + value_nonce + AESGCM(dek).encrypt(value_nonce, SECRET, _documented_value_aad(CTX))
    )
    wrapped = (
        b"\x01"
        + wrap_nonce
        + AESGCM(KEY_B.material).encrypt(wrap_nonce, dek, _documented_dek_aad("key-b", CTX))
    )
    assert env_ab.open(SealedValue("key-b", wrapped, ciphertext), CTX) == SECRET


@pytest.mark.parametrize("dek_size", [16, 24, 31, 33, 48])
def test_wrapped_key_of_the_wrong_size_is_rejected_even_if_authentic(
    env_ab: Envelope, dek_size: int
) -> None:
    """Someone holding the KEK cannot smuggle in an AES-128 (or invalid) data key."""
    dek = os.urandom(dek_size)
    value_nonce, wrap_nonce = os.urandom(12), os.urandom(12)
    value_aead = AESGCM(dek) if dek_size in (16, 24) else AESGCM(os.urandom(32))
    ciphertext = (
        b"\x01" + value_nonce + value_aead.encrypt(value_nonce, SECRET, _documented_value_aad(CTX))
    )
    wrapped = (
        b"\x01"
        + wrap_nonce
        + AESGCM(KEY_A.material).encrypt(wrap_nonce, dek, _documented_dek_aad("key-a", CTX))
    )
    assert_open_fails(env_ab, SealedValue("key-a", wrapped, ciphertext), CTX)


def test_value_stored_by_an_earlier_build_still_opens() -> None:
    """Frozen vector: a format change must not silently orphan stored rows."""
    stored = SealedValue(
        key_id="k1",
        wrapped_dek=bytes.fromhex(
            "01742edd55c3450595beb491fec21ea66c71bc814e698cdd9aa55f1b5ab44981"
            "d9b4340c26f25e4beea2d2571d537e807df33d7da8076e207738917ecc"
        ),
        ciphertext=bytes.fromhex(
            "0190b7c615aa1a75d967bb09ab864b6745f065587b85249599bf51bc7f5b8ec44f1a49f6"
        ),
    )
    ctx = SecretContext("6f1c9a52-0000-4000-8000-000000000001", "db/password", 3)
    env = envelope(MasterKey("k1", bytes(range(32))))
    assert env.open(stored, ctx) == b"hunter2"


# --- types and errors ------------------------------------------------------------------------


def test_decryption_failed_is_opaque_and_picklable() -> None:
    error = DecryptionFailed()
    assert str(error) == "decryption failed"
    assert error.args == ("decryption failed",)
    assert repr(error) == "DecryptionFailed()"
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, DecryptionFailed)
    assert str(copy) == "decryption failed"
    assert not issubclass(DecryptionFailed, ValueError)


def test_failure_carries_no_cause_or_detail(env_ab: Envelope) -> None:
    sealed = env_ab.seal(SECRET, CTX)
    with pytest.raises(DecryptionFailed) as info:
        env_ab.open(dataclasses.replace(sealed, ciphertext=sealed.ciphertext[:-1] + b"\x00"), CTX)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("id", "name", -1), ValueError),
        (("id", "name", 2**63), ValueError),
        (("id", "name", True), TypeError),
        (("id", "name", 1.0), TypeError),
        ((1, "name", 1), TypeError),
        (("id", b"name", 1), TypeError),
        (("id\ud800", "name", 1), ValueError),
    ],
)
def test_secret_context_rejects_unencodable_identities(
    args: tuple[object, object, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        SecretContext(*args)  # type: ignore[arg-type]


def test_seal_rejects_a_missing_context(env_ab: Envelope) -> None:
    with pytest.raises(TypeError):
        env_ab.seal(SECRET, ("id", "name", 1))  # type: ignore[arg-type]


def test_envelope_keeps_no_plaintext_or_dek_state(env_ab: Envelope) -> None:
    assert not hasattr(env_ab, "__dict__")
    assert set(Envelope.__slots__) == {"_kek_aeads", "_keyring"}


def test_nonce_budget_constants() -> None:
    assert NONCE_HARD_LIMIT == 2**32
    assert NONCE_WARN_THRESHOLD == 2**31
    assert NONCE_WARN_THRESHOLD < NONCE_HARD_LIMIT
