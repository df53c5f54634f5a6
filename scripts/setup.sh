#!/usr/bin/env bash
# Idempotent set-up for development, tests and benchmarks on Debian with Python 3.11:
# system packages the tests use, then .venv with tfgate and its dev dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

need_apt=()
"$PYTHON" -c "import venv, ensurepip" >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
# tests/integration/test_dashboard.py drives the dashboard in Debian's chromium (Playwright
# uses it through executable_path; it downloads no browser of its own)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "note: missing ${need_apt[*]} (run as root or install them) - tests needing them skip" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.tfgate-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi

# Triton's and KServe's V2 clients for tests/integration/test_v2_clients.py, in their own
# venv (they pin protobuf below 7); about a minute the first time, nothing after.
scripts/setup_v2_clients.sh
