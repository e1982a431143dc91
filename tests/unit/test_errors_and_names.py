"""The error vocabulary and the name grammar, each defined once and checked against the
places that cannot import it (the SQL migration, grpc's status codes, REASONS)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grpc
import pytest
from interakt.vault.v1.error_reason_pb2 import ErrorReason

from vaultsvc.api.status import GRPC_CODES, status_for
from vaultsvc.domain import validate_name
from vaultsvc.errors import Code, InvalidArgument, NotFound, Reason, VaultError
from vaultsvc.names import NAME_MAX_LENGTH, NAME_PATTERN, NAME_REGEX, name_key
from vaultsvc.templates import scan_template

PACKAGE = Path(__file__).resolve().parents[2] / "vaultsvc"
MIGRATIONS = PACKAGE / "storage" / "migrations"


def test_every_code_maps_to_the_grpc_code_of_the_same_name() -> None:
    assert set(GRPC_CODES) == set(Code)
    for code, status in GRPC_CODES.items():
        assert status is grpc.StatusCode[code.name]


def test_reason_members_are_their_values() -> None:
    assert len(Reason) == 58  # REASONS.txt's 56 + REQUEST_ID_REUSED (15) + OPERATOR_REQUIRED (13)
    for member in Reason:
        assert member.name == member.value
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", member.value)


def test_reason_is_exactly_the_contracts_error_reason_enum() -> None:
    """The server's Reason and the proto's ErrorReason are one list (names and order)."""
    contract = [value.name for value in ErrorReason.DESCRIPTOR.values if value.number != 0]
    assert [reason.value for reason in Reason] == contract


def test_status_carries_the_code_reason_and_request_id() -> None:
    err = NotFound("secret not found: x", reason=Reason.SECRET_NOT_FOUND, metadata={"names": "x"})
    status = status_for(err, "req-1")
    assert status.code is grpc.StatusCode.NOT_FOUND
    assert status.details == "secret not found: x"
    assert str(err) == "NOT_FOUND SECRET_NOT_FOUND: secret not found: x"


def test_default_reason_and_metadata_copy() -> None:
    metadata = {"names": "a"}
    err = InvalidArgument("bad", metadata=metadata)
    metadata["names"] = "b"
    assert err.reason is Reason.INVALID_ARGUMENT
    assert err.metadata == {"names": "a"}
    assert VaultError("x").code is Code.INTERNAL


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize(
    "path",
    [
        PACKAGE / "errors.py",
        PACKAGE / "domain.py",
        PACKAGE / "limits.py",
        PACKAGE / "names.py",
        *sorted((PACKAGE / "templates").glob("*.py")),
        *sorted((PACKAGE / "crypto").glob("*.py")),
        *sorted((PACKAGE / "vault").glob("*.py")),
    ],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_domain_layers_do_not_import_grpc(path: Path) -> None:
    grpc_bound = {m for m in _imports(path) if m == "grpc" or m.startswith(("grpc.", "grpc_"))}
    grpc_bound |= {m for m in _imports(path) if m.startswith(("vaultsvc.api", "interakt"))}
    assert not grpc_bound, f"{path.name} imports {sorted(grpc_bound)}"


def test_migration_check_constraints_spell_the_python_grammar() -> None:
    sql = "\n".join(p.read_text(encoding="utf-8") for p in sorted(MIGRATIONS.glob("*.sql")))
    checks = re.findall(r"CHECK \((name|key) ~ '([^']*)'\)", sql)
    assert {column for column, _ in checks} == {"name", "key"}
    for column, pattern in checks:
        assert pattern == f"^{NAME_REGEX}$", f"the SQL check on {column} drifted from names.py"
    assert "GENERATED ALWAYS AS (lower(name)) STORED" in sql
    assert name_key("Stripe_KEY") == "stripe_key"


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("a", True),
        ("A" + "b" * (NAME_MAX_LENGTH - 1), True),
        ("A" + "b" * NAME_MAX_LENGTH, False),
        ("stripe_live-key2", True),
        ("2fa", False),
        ("_x", False),
        ("a.b", False),
        ("a b", False),
        ("", False),
    ],
)
def test_parser_and_validation_agree_on_the_grammar(name: str, valid: bool) -> None:
    assert (NAME_PATTERN.fullmatch(name) is not None) is valid
    if valid:
        assert validate_name(name) == name
    else:
        with pytest.raises(InvalidArgument) as info:
            validate_name(name)
        assert info.value.reason is Reason.INVALID_NAME
    template, problems = scan_template(f"{{{{secret:{name}}}}}", 1)
    assert (template is not None and not problems) is valid


@pytest.mark.parametrize(
    ("names", "shown", "more"),
    [
        ([f"n{i}" for i in range(5)], 5, 0),
        ([f"n{i:02d}" for i in range(30)], 20, 10),
        (["x" * 128] * 100, 1024 // 128, 100 - 1024 // 128),
        (["y" * 2000, "z"], 1, 1),  # one name is always shown, however long
    ],
)
def test_listed_names_are_capped_by_count_and_characters(
    names: list[str], shown: int, more: int
) -> None:
    from vaultsvc.errors import listed

    parts = listed(names, ",").split(",")
    assert parts[:shown] == names[:shown]
    if more:
        assert parts[shown:] == [f"and {more} more"]
    else:
        assert len(parts) == shown
