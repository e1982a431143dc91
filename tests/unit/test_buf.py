"""buf lint (STANDARD, buf.yaml) and buf breaking against the committed baseline image.

The buf CLI comes from npm (`@bufbuild/buf`, pinned in tools/buf/package.json), installed
by `make test`'s node-deps step. CI clones carry no tags, so `buf breaking` compares with
the committed image protos/buf-baseline.binpb (`make proto-baseline` refreshes it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[2]
BUF = REPO / "tools/buf/node_modules/.bin/buf"
BASELINE = REPO / "protos/buf-baseline.binpb"
VAULT_PROTOS = REPO / "protos/interakt/vault/v1"


@pytest.fixture(scope="module")
def buf() -> Path:
    if not BUF.exists():
        pytest.fail(
            f"buf CLI not found at {BUF.relative_to(REPO)}: run `make node-deps` "
            "(npm ci --prefix tools/buf), which `make test` does first"
        )
    return BUF


def run_buf(buf: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(buf), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def copy_workspace(dest: Path) -> Path:
    shutil.copy(REPO / "buf.yaml", dest / "buf.yaml")
    shutil.copytree(REPO / "protos", dest / "protos")
    return dest / "protos/interakt/vault/v1"


def test_buf_lint_is_clean(buf: Path) -> None:
    result = run_buf(buf, "lint")
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_no_breaking_change_against_the_committed_baseline(buf: Path) -> None:
    result = run_buf(buf, "breaking", "--against", str(BASELINE.relative_to(REPO)))
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_baseline_image_holds_the_contract() -> None:
    # A buf image is wire-compatible with FileDescriptorSet (field 1: the files).
    image = descriptor_pb2.FileDescriptorSet.FromString(BASELINE.read_bytes())
    vault = {f.name for f in image.file if f.package == "interakt.vault.v1"}
    assert {
        "interakt/vault/v1/secret_service.proto",
        "interakt/vault/v1/config_service.proto",
        "interakt/vault/v1/resolver_service.proto",
        "interakt/vault/v1/audit_service.proto",
        "interakt/vault/v1/error_reason.proto",
    } <= vault
    for name in vault:
        assert (REPO / "protos" / name).exists(), f"{name} was removed from protos/"


def test_breaking_check_catches_a_renamed_field(buf: Path, tmp_path: Path) -> None:
    protos = copy_workspace(tmp_path)
    path = protos / "secret_service.proto"
    path.write_text(path.read_text().replace("string etag = 5;", "string version_tag = 5;"))
    result = run_buf(buf, "breaking", "--against", str(BASELINE), cwd=tmp_path)
    assert result.returncode != 0
    assert 'changed name from "etag" to "version_tag"' in result.stdout


def test_breaking_check_catches_a_renumbered_error_reason(buf: Path, tmp_path: Path) -> None:
    protos = copy_workspace(tmp_path)
    path = protos / "error_reason.proto"
    original = path.read_text()
    renumbered = original.replace("SECRET_NOT_FOUND = 44;", "SECRET_NOT_FOUND = 100;")
    assert renumbered != original
    path.write_text(renumbered)
    result = run_buf(buf, "breaking", "--against", str(BASELINE), cwd=tmp_path)
    assert result.returncode != 0
    assert '"44"' in result.stdout, result.stdout


def test_lint_exemptions_stay_narrow(buf: Path, tmp_path: Path) -> None:
    """The value-prefix exemption covers error_reason.proto only; other files keep STANDARD."""
    protos = copy_workspace(tmp_path)
    (protos / "severity_probe.proto").write_text(
        'syntax = "proto3";\n\npackage interakt.vault.v1;\n\n'
        "enum SeverityProbe {\n  SEVERITY_PROBE_UNSPECIFIED = 0;\n  WARNING = 1;\n}\n"
    )
    path = protos / "resolver_service.proto"
    path.write_text(
        path.read_text().replace(
            "returns (CheckTemplateResponse);", "returns (ResolveTemplateResponse);"
        )
    )
    result = run_buf(buf, "lint", cwd=tmp_path)
    assert result.returncode != 0
    assert 'Enum value name "WARNING" should be prefixed with "SEVERITY_PROBE_"' in result.stdout
    assert 'RPC response type "ResolveTemplateResponse" should be named' in result.stdout
