#!/usr/bin/env bash
# Installs the Node.js dev tools of package.json (buf, @grpc/grpc-js, @grpc/proto-loader) into
# node_modules/ with `npm ci`, exactly as package-lock.json pins them.
# Idempotent: does nothing when node_modules/ was installed from the current package.json and
# package-lock.json (a stamp file holds their hash). Concurrent runs wait for each other.
# Dependency install scripts are not run: none is needed (buf's postinstall only swaps its Node
# launcher for the native binary, which the launcher finds on its own).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  echo "npm-setup: node and npm are required (Node.js >= 20 with npm); install them and re-run" >&2
  exit 1
fi

stamp=node_modules/.clipsearch-npm-stamp
want=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)
fresh() {
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -e node_modules/@bufbuild/buf/bin/buf ]
}
fresh && exit 0

mkdir -p .cache
exec 9>.cache/npm-setup.lock
if command -v flock >/dev/null 2>&1; then
  flock 9
fi
fresh && exit 0  # another run installed it while this one waited

if ! npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >.cache/npm-setup.log 2>&1; then
  cat .cache/npm-setup.log >&2
  echo "npm-setup: 'npm ci' failed (log above, also in .cache/npm-setup.log)" >&2
  exit 1
fi
echo "$want" >"$stamp"
