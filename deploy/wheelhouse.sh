#!/bin/sh
# Build the wheelhouse: wheels of the contract (interakt-vault-api), the server (vaultsvc)
# and the client (vaultsvc-client), plus every dependency they need, into $1 (default dist).
# Run from the repository root. `make dist` and the Dockerfile's build stage both run it;
# afterwards `pip install --no-index --find-links <dir> vaultsvc` works offline.
set -eu
out=${1:-dist}
python=${PYTHON:-python3}
mkdir -p "$out"
"$python" -m pip wheel --no-cache-dir --wheel-dir "$out" ./api/python . ./clients/python
ls "$out"
