"""Generate the Python stubs from ``protos/`` (used by ``make proto`` and the drift test).

The generated code lives in the client distribution (``clients/python/src/interakt``) so
that a client install gets the messages without the server's dependencies.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_PACKAGE = Path("interakt/vault/v1")
INIT_DIRS = (Path("interakt"), Path("interakt/vault"), PROTO_PACKAGE)


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) for every proto file into ``out_dir``."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    # protoc finds the mypy-protobuf plugins on PATH; they sit beside this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    out_dir.mkdir(parents=True, exist_ok=True)
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
    for package_dir in INIT_DIRS:
        init = out_dir / package_dir / "__init__.py"
        init.write_text('"""Generated from protos/ by `make proto`; do not edit."""\n')
        (out_dir / package_dir / "py.typed").write_text("")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "clients/python/src")
