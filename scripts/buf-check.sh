#!/usr/bin/env bash
# Checks the gRPC API in protos/ with buf (installed from npm by scripts/npm-setup.sh):
#   1. buf lint      STANDARD rules of protos/buf.yaml;
#   2. buf breaking  against each protos/baseline/*.binpb, one per released major version
#                    (clipsearch-v1.binpb: the released clipsearch.v1 API; see protos/README.md);
#   3. buf breaking  against the protos/ of $BUF_BASE_REF (default origin/main; more exactly, of
#                    its merge base with HEAD), when that ref exists, HEAD is ahead of that commit,
#                    and it has a protos/buf.yaml.
# Runs every check, prints each failure, and exits non-zero when any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

./scripts/npm-setup.sh || exit 1
BUF=node_modules/@bufbuild/buf/bin/buf
BASE_REF=${BUF_BASE_REF:-origin/main}

failed=0
check() {
  local what=$1
  shift
  echo "buf-check: $what"
  if ! "$@"; then
    echo "buf-check: FAILED: $what" >&2
    failed=1
  fi
}

check "lint" "$BUF" lint protos
shopt -s nullglob
baselines=(protos/baseline/*.binpb)
if [ ${#baselines[@]} -eq 0 ]; then
  echo "buf-check: FAILED: no baseline image in protos/baseline/ (see protos/README.md)" >&2
  failed=1
fi
for baseline in "${baselines[@]}"; do
  check "breaking against $baseline" "$BUF" breaking protos --against "$baseline"
done

# Compared with the merge base of HEAD and $BASE_REF, not $BASE_REF itself: a branch that is merely
# behind main must not be blamed for "deleting" what main added since (a shallow clone without the
# merge base falls back to $BASE_REF).
if ref=$(git rev-parse --verify -q "$BASE_REF^{commit}" 2>/dev/null); then
  base=$(git merge-base HEAD "$ref" 2>/dev/null || echo "$ref")
  if [ "$base" = "$(git rev-parse HEAD)" ]; then
    echo "buf-check: HEAD is $BASE_REF or behind it: no comparison against it"
  elif ! git cat-file -e "$base:protos/buf.yaml" 2>/dev/null; then
    echo "buf-check: $BASE_REF (${base:0:12}) has no protos/buf.yaml: no comparison against it"
  else
    check "breaking against $BASE_REF (${base:0:12})" \
      "$BUF" breaking protos --against ".git#ref=$base,subdir=protos"
  fi
else
  echo "buf-check: no $BASE_REF ref: compared against the baseline only"
fi

if [ "$failed" -ne 0 ]; then
  echo "buf-check: failed" >&2
  exit 1
fi
echo "buf-check: ok"
