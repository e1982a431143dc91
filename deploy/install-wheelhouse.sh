#!/bin/sh
# Install the server from a wheelhouse into a new virtual environment, offline:
#   install-wheelhouse.sh <wheelhouse> <venv>
# The Dockerfile's final stage runs exactly this; tests/integration/test_deploy.py replays it
# as an unprivileged user and starts the server from the result. Only the server (and the
# contract it pins) is installed: no client, no compiler, no build tools.
set -eu
wheels=$1
venv=$2
python=${PYTHON:-python3}
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --no-cache-dir --no-index --find-links "$wheels" vaultsvc
"$venv/bin/vaultsvc" --version
