#!/usr/bin/env bash
# Create .venv-v2clients: the Open Inference Protocol (V2) clients the integration tests drive
# tfgate with, Triton's tritonclient[http,grpc] and KServe's Python SDK, in their own venv:
# both pin protobuf below 7 (and KServe pins its own FastAPI stack), so they never touch .venv.
# tests/integration/test_v2_clients.py runs its client checks with this venv's python.
# Idempotent. Takes about two minutes the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
stamp=.venv-v2clients/.installed
if [ ! -f "$stamp" ] || [ scripts/setup_v2_clients.sh -nt "$stamp" ]; then
  [ -x .venv-v2clients/bin/python ] || "$PYTHON" -m venv .venv-v2clients
  .venv-v2clients/bin/python -m pip install -q --upgrade pip
  .venv-v2clients/bin/python -m pip install -q "tritonclient[http,grpc]>=2.50,<3" "kserve>=0.15,<0.22" "pyyaml>=6"
  touch "$stamp"
fi
