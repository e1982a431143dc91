"""Generate the Python stubs of the contract from ``protos/`` (``make proto``; the drift test).

A build script, not runtime code: it needs the pinned ``grpcio-tools`` and ``mypy-protobuf``
of the server's ``dev`` extra. The output goes to the ``interakt-vault-api`` distribution
(``api/python/src``) by default, or to the directory given as the only argument.

``interakt`` and ``interakt.vault`` are PEP 420 namespace packages (no ``__init__.py``), as
``google`` is in googleapis-common-protos, so another ``interakt.*`` API distribution built
the same way installs beside this one. Only the leaf package ``interakt.vault.v1`` gets an
``__init__.py`` and the PEP 561 ``py.typed`` marker.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
DEFAULT_OUT = REPO_ROOT / "api/python/src"
PROTO_PACKAGE = Path("interakt/vault/v1")
NAMESPACE_DIRS = (Path("interakt"), Path("interakt/vault"))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
INIT_TEXT = '"""Generated from protos/ by `make proto`; do not edit."""\n'


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))


def _remove_stale(out_dir: Path) -> None:
    """Drop earlier output so that a deleted .proto leaves no orphan module behind."""
    package_dir = out_dir / PROTO_PACKAGE
    if package_dir.is_dir():
        for path in package_dir.iterdir():
            if path.is_file() and path.name.endswith(GENERATED_SUFFIXES):
                path.unlink()


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) with the mypy-protobuf plugins into ``out_dir``."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    # protoc finds the mypy-protobuf plugins on PATH; they sit beside this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(out_dir)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for namespace in NAMESPACE_DIRS:
        if (out_dir / namespace / "__init__.py").exists():
            raise SystemExit(f"{out_dir / namespace} must stay a namespace package")
    (out_dir / PROTO_PACKAGE / "__init__.py").write_text(INIT_TEXT)
    (out_dir / PROTO_PACKAGE / "py.typed").write_text("")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit("usage: python tools/protogen.py [OUT_DIR]")
    generate(Path(argv[0]) if argv else DEFAULT_OUT)


if __name__ == "__main__":
    main(sys.argv[1:])
