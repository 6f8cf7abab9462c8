#!/usr/bin/env bash
# Creates .venv (Python >= 3.11) and installs clipsearch with everything (server, worker, dev tools).
# Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch and torchvision are pinned as a pair that imports together (torch<=2.14.1 is what the build
# machines keep on disk); on other machines pip downloads them.
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[dev]"
