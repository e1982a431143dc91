"""Master keys: parsing VAULT_MASTER_KEYS, key files, generation, keyring, check values."""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import traceback
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultsvc.crypto import (
    Keyring,
    KeyringError,
    MasterKey,
    generate_master_key,
    key_check_value,
    load_key_file,
    parse_master_keys,
    verify_key_check_value,
)

KEY_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# Recognisable key material whose base64 contains '+' and '/' (urlsafe: '-' and '_').
CANARY = bytes.fromhex("fbff" * 4) + b"CANARY-KEY-MATERIAL!" + bytes.fromhex("fbffbfbf")
assert len(CANARY) == 32
CANARY_B64 = base64.b64encode(CANARY).decode()
CANARY_URLSAFE = base64.urlsafe_b64encode(CANARY).decode()
assert "+" in CANARY_B64 and "/" in CANARY_B64 and CANARY_B64 != CANARY_URLSAFE
OTHER = os.urandom(32)
OTHER_B64 = base64.b64encode(OTHER).decode()


def leaks(text: str, material: bytes = CANARY) -> bool:
    encodings = {
        base64.b64encode(material).decode(),
        base64.b64encode(material).decode().rstrip("="),
        base64.urlsafe_b64encode(material).decode().rstrip("="),
        material.hex(),
        repr(material),
        str(material),
        "CANARY",
    }
    encodings |= {e[:12] for e in set(encodings) if len(e) > 12}
    return any(e in text for e in encodings)


def full_report(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error)


# --- parse_master_keys ----------------------------------------------------------------------


def test_single_key() -> None:
    keyring = parse_master_keys(f"k1:{CANARY_B64}")
    assert keyring.ids == ("k1",)
    assert keyring.primary == MasterKey("k1", CANARY)
    assert keyring.get("k1").material == CANARY


def test_first_key_is_primary_and_order_is_kept() -> None:
    keyring = parse_master_keys(f"new:{OTHER_B64},old.2024:{CANARY_B64},older_1:{OTHER_B64}")
    assert keyring.primary.key_id == "new"
    assert keyring.primary.material == OTHER
    assert keyring.ids == ("new", "old.2024", "older_1")
    assert "old.2024" in keyring
    assert "missing" not in keyring
    assert 1 not in keyring
    assert len(keyring) == 3


@pytest.mark.parametrize(
    "encoded",
    [
        CANARY_B64,
        CANARY_B64.rstrip("="),
        CANARY_URLSAFE,
        CANARY_URLSAFE.rstrip("="),
        f"  {CANARY_B64}  ",
    ],
    ids=["standard", "standard-unpadded", "urlsafe", "urlsafe-unpadded", "whitespace"],
)
def test_base64_variants_decode_to_the_same_key(encoded: str) -> None:
    assert parse_master_keys(f"k1:{encoded}").primary.material == CANARY


def test_whitespace_around_entries_is_ignored() -> None:
    keyring = parse_master_keys(f"  a : {CANARY_B64} ,\n b:{OTHER_B64}\n")
    assert keyring.ids == ("a", "b")


@settings(max_examples=50, deadline=None)
@given(
    materials=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=5),
    urlsafe=st.booleans(),
    padded=st.booleans(),
)
def test_parse_round_trips(materials: list[bytes], urlsafe: bool, padded: bool) -> None:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    entries = []
    for index, material in enumerate(materials):
        text = encode(material).decode()
        entries.append(f"key{index}:{text if padded else text.rstrip('=')}")
    keyring = parse_master_keys(",".join(entries))
    assert [keyring.get(f"key{i}").material for i in range(len(materials))] == materials


def _parse_error(spec: str) -> KeyringError:
    with pytest.raises(KeyringError) as info:
        parse_master_keys(spec)
    error = info.value
    assert isinstance(error, ValueError)
    report = full_report(error)
    assert not leaks(report), report
    assert not leaks(report, OTHER), report
    return error


@pytest.mark.parametrize("spec", ["", "   ", "\n"])
def test_empty_spec(spec: str) -> None:
    message = str(_parse_error(spec))
    assert "no master keys" in message
    assert "id:base64key" in message


def test_missing_colon_names_the_position_not_the_entry() -> None:
    message = str(_parse_error(f"k1:{OTHER_B64},{CANARY_B64}"))
    assert "entry 2" in message
    assert "':'" in message


def test_empty_entry() -> None:
    assert "entry 2 is empty" in str(_parse_error(f"k1:{OTHER_B64},"))
    assert "entry 1 is empty" in str(_parse_error(f",k1:{OTHER_B64}"))


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "-leading-dash",
        ".hidden",
        "_x",
        "has space",
        "a/b",
        "é",
        "a" * 65,
        CANARY_B64,  # id and key swapped: the "id" is key material
        CANARY_URLSAFE,
    ],
)
def test_bad_id_names_the_position_only(bad_id: str) -> None:
    message = str(_parse_error(f"ok:{OTHER_B64},{bad_id}:{OTHER_B64}"))
    assert "entry 2" in message
    assert "invalid id" in message
    if bad_id:
        assert bad_id not in message


def test_longest_valid_id_is_accepted() -> None:
    assert parse_master_keys(f"{'a' * 64}:{CANARY_B64}").primary.key_id == "a" * 64


def test_duplicate_id() -> None:
    message = str(_parse_error(f"k1:{CANARY_B64},k2:{OTHER_B64},k1:{OTHER_B64}"))
    assert "'k1'" in message
    assert "twice" in message


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "!!!!",
        CANARY_B64[:-2] + "*=",
        CANARY_B64 + "A",  # 45 chars: one more than a multiple of four
        CANARY_B64.rstrip("=") + "=" + "AAAA",  # padding in the middle
        CANARY_B64[:20] + " " + CANARY_B64[20:],  # inner whitespace
        "é" * 44,
    ],
)
def test_bad_base64_names_the_id(encoded: str) -> None:
    message = str(_parse_error(f"mykey:{encoded}"))
    assert "'mykey'" in message
    assert "base64" in message


@pytest.mark.parametrize("size", [1, 16, 31, 33, 64])
def test_wrong_key_length_names_the_id(size: int) -> None:
    material = (CANARY * 3)[:size]
    message = str(_parse_error(f"short:{base64.b64encode(material).decode()}"))
    assert "'short'" in message
    assert "32 bytes" in message
    assert f"got {size}" in message


def test_errors_leave_no_exception_chain() -> None:
    error = _parse_error(f"k1:{CANARY_B64[:-2]}*=")
    assert error.__cause__ is None
    assert error.__suppress_context__ or error.__context__ is None


# --- MasterKey / Keyring ---------------------------------------------------------------------


def test_master_key_never_shows_material() -> None:
    key = MasterKey("k1", CANARY)
    for text in (repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"k": key})):
        assert not leaks(text), text
        assert "k1" in text


def test_keyring_repr_never_shows_material() -> None:
    keyring = parse_master_keys(f"a:{CANARY_B64},b:{CANARY_URLSAFE}")
    text = repr(keyring) + str(keyring)
    assert not leaks(text), text
    assert text.startswith("Keyring(ids=('a', 'b'), primary='a')")


@pytest.mark.parametrize("key_id", ["", "-a", "a\n", "a b", "a" * 65, "ä"])
def test_master_key_rejects_bad_ids(key_id: str) -> None:
    with pytest.raises(KeyringError):
        MasterKey(key_id, CANARY)


@pytest.mark.parametrize("material", [b"", b"x" * 31, b"x" * 33, "x" * 32])
def test_master_key_rejects_bad_material(material: bytes) -> None:
    with pytest.raises(KeyringError) as info:
        MasterKey("k1", material)
    assert "'k1'" in str(info.value)
    assert "xxxx" not in str(info.value)


def test_master_key_is_frozen_and_normalises_material() -> None:
    key = MasterKey("k1", bytearray(CANARY))  # type: ignore[arg-type]
    assert type(key.material) is bytes
    with pytest.raises(AttributeError):
        key.material = OTHER  # type: ignore[misc]


def test_keyring_errors() -> None:
    with pytest.raises(KeyringError, match="no master keys"):
        Keyring([])
    with pytest.raises(KeyringError, match="'a' is listed twice"):
        Keyring([MasterKey("a", CANARY), MasterKey("a", OTHER)])
    with pytest.raises(TypeError):
        Keyring([("a", CANARY)])  # type: ignore[list-item]


def test_keyring_get_unknown_says_what_to_do() -> None:
    keyring = Keyring([MasterKey("a", CANARY)])
    with pytest.raises(KeyringError) as info:
        keyring.get("gone-2023")
    message = str(info.value)
    assert "'gone-2023'" in message
    assert "VAULT_MASTER_KEYS" in message
    assert not leaks(full_report(info.value))
    assert keyring.find("gone-2023") is None
    assert keyring.find("a") is keyring.primary


# --- key files -------------------------------------------------------------------------------


def test_load_key_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(f"\n  {CANARY_B64}\n\n")
    assert load_key_file(path) == CANARY
    assert load_key_file(str(path)) == CANARY
    path.write_text(CANARY_URLSAFE.rstrip("="))
    assert load_key_file(path) == CANARY


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n",
        CANARY_B64.encode() + b"," + CANARY_B64.encode(),
        f"k1:{CANARY_B64}".encode(),
        base64.b64encode(CANARY[:31]),
        base64.b64encode(CANARY + b"!"),
        CANARY,  # raw bytes instead of base64
        b"\xff\xfe" + CANARY_B64.encode(),
        CANARY_B64.encode() * 200,
    ],
)
def test_malformed_key_file_names_the_path_only(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(KeyringError) as info:
        load_key_file(path)
    message = str(info.value)
    assert str(path) in message
    assert not leaks(full_report(info.value))


def test_unreadable_key_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(KeyringError) as info:
        load_key_file(missing)
    assert str(missing) in str(info.value)
    assert info.value.__cause__ is None
    with pytest.raises(KeyringError, match="cannot read"):
        load_key_file(tmp_path)


# --- generation ------------------------------------------------------------------------------


def test_generate_master_key() -> None:
    key_id, encoded = generate_master_key()
    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).strftime("%Y%m%d")
    assert KEY_ID_RE.fullmatch(key_id)
    assert key_id.startswith((f"k{today}", f"k{yesterday}"))
    assert len(base64.b64decode(encoded, validate=True)) == 32
    keyring = parse_master_keys(f"{key_id}:{encoded}")
    assert keyring.primary.key_id == key_id


def test_generated_keys_are_distinct() -> None:
    generated = [generate_master_key() for _ in range(50)]
    assert len({encoded for _, encoded in generated}) == 50
    assert len({key_id for key_id, _ in generated}) > 1


# --- key check value -------------------------------------------------------------------------


def test_key_check_value() -> None:
    key = MasterKey("k1", CANARY)
    kcv = key_check_value(key)
    assert isinstance(kcv, bytes)
    assert len(kcv) == 32
    assert key_check_value(MasterKey("other-id", CANARY)) == kcv
    assert key_check_value(MasterKey("k1", OTHER)) != kcv
    assert CANARY not in kcv
    assert kcv != CANARY


def test_key_check_value_is_the_documented_hmac() -> None:
    import hashlib
    import hmac

    key = MasterKey("k1", CANARY)
    expected = hmac.new(CANARY, b"vaultsvc key check value v1", hashlib.sha256).digest()
    assert key_check_value(key) == expected


def test_verify_key_check_value() -> None:
    right, wrong = MasterKey("k1", CANARY), MasterKey("k1", OTHER)
    kcv = key_check_value(right)
    assert verify_key_check_value(right, kcv)
    assert verify_key_check_value(right, bytearray(kcv))  # type: ignore[arg-type]
    assert not verify_key_check_value(wrong, kcv)
    assert not verify_key_check_value(right, kcv[:-1])
    assert not verify_key_check_value(right, b"")
    assert not verify_key_check_value(right, bytes(32))
    assert not verify_key_check_value(right, kcv.hex())  # type: ignore[arg-type]
