#!/usr/bin/env bash
# The checks that keep the code's shape, run by .ci/run before the tests (the dev tools come with
# ./scripts/setup.sh): ruff (lint and import order), mypy (types; strict for the client, which ships
# py.typed) and the docs site, built strictly (a broken link or anchor fails it).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "check: ruff"
.venv/bin/ruff check --quiet .
echo "check: mypy"
.venv/bin/mypy --no-error-summary
echo "check: mkdocs build --strict"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
echo "check: all passed"
