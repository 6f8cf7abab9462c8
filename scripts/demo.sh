#!/usr/bin/env bash
# The main job, from nothing: set up, start the stack (`clipsearch up`), index a folder, run a text search.
#
#   ./scripts/demo.sh                                   # offline: tiny bundled model + synthetic pictures
#   IMAGES=~/Pictures QUERY="a red sports car" CLIPSEARCH_MODEL=ViT-B-32 \
#     CLIPSEARCH_PRETRAINED=laion2b_s34b_b79k ./scripts/demo.sh   # real CLIP on your photos (downloads weights)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-0}
TINY="$PWD/devkit/clipsearch_devkit/tinyclip/model"  # clipsearch_devkit.tinyclip.MODEL_DIR
MODEL=${CLIPSEARCH_MODEL:-local-dir:$TINY}
PRETRAINED=${CLIPSEARCH_PRETRAINED:-none}
PORT=${PORT:-50051}
DATA=${DATA:-$PWD/demo-data}
QUERY=${QUERY:-a red circle}
if [ "$MODEL" = "local-dir:$TINY" ] && [ ! -f "$TINY/open_clip_model.safetensors" ]; then
  python -m clipsearch_devkit.tinyclip.train --out "$TINY"
fi
if [ -z "${IMAGES:-}" ]; then
  IMAGES="$DATA/images"
  python - "$IMAGES" <<'PY'
import sys
from pathlib import Path
from clipsearch_devkit.tinyclip.synthetic import iter_balanced
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for n, (image, color, shape) in enumerate(iter_balanced(4, seed=2024)):
    image.save(out / f"{color}-{shape}-{n:03d}.png")
print(f"wrote {n + 1} sample pictures to {out}")
PY
fi
clipsearch up --model "$MODEL" --pretrained "$PRETRAINED" --data-dir "$DATA/stack" --port "$PORT" \
  --redis-url "${CLIPSEARCH_REDIS_URL:-}" &
UP=$!
trap 'kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null || true' EXIT
export CLIPSEARCH_SERVER="localhost:$PORT"
for _ in $(seq 600); do
  clipsearch stats --timeout 2 >/dev/null 2>&1 && break
  kill -0 $UP 2>/dev/null || { echo "clipsearch up exited" >&2; exit 1; }
  sleep 1
done
clipsearch index "$IMAGES"
clipsearch search "$QUERY" -k 5
clipsearch stats
