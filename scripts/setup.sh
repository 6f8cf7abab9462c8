#!/usr/bin/env bash
# Creates .venv (Python >= 3.11) and installs clipsearch with everything (server, worker, dev tools).
# Idempotent: re-running only installs what changed. pip's output goes to .venv/setup.log and is shown
# only when a step fails, so that the README's commands print what matters.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
LOG=.venv/setup.log
: > "$LOG"
pip_install() {
  if ! .venv/bin/python -m pip install --quiet "$@" >> "$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "setup: pip install $* failed (log above, also in $LOG)" >&2
    exit 1
  fi
}
pip_install --upgrade pip
# torch and torchvision are pinned as a pair that imports together (torch<=2.14.1 is what the build
# machines keep on disk); on other machines pip downloads them.
pip_install "torch==2.14.1" "torchvision==0.29.1"
pip_install -e ".[dev]"
# The developer kit the tests, bench/ and demo.sh share (devkit/): its own distribution, not in the clipsearch wheel
pip_install -e ./devkit
# The search page's browser test drives Debian's Chromium (playwright never downloads a browser here);
# without it that test skips. Installed quietly where apt-get can (root, e.g. CI).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >> "$LOG" 2>&1; then
    echo "setup: could not install Debian chromium (log: $LOG); the browser test will skip" >&2
  fi
fi
echo "setup: .venv ready (pip log: $LOG)"
