#!/usr/bin/env bash
# The GPU measurements of docs/BENCHMARKS.md as one bounded script for a lent GPU machine (device
# tool), which has its own Python with PyTorch and no network: per-stage rates (decode on CPU and on
# the device, host-to-device copy, model forward), the worker end to end for ViT-B-32 and ViT-L-14
# with CPU and device JPEG decoding, and TextSearch/ImageSearch latency and throughput.
# Random weights (--pretrained none): no downloads.
#
# What the machine lacks travels as wheels in .whl/ (cp312, manylinux x86_64; see
# scripts/gpu-wheels.sh) and is installed with no index into /tmp/site; the machine's own torch,
# torchvision, numpy and Pillow are used. Each step has its own time limit, so one failure leaves
# the other figures. Results: JSON files and logs, packed into $OUT/gpu-results.tar.gz after each step
# (bench/results/gpu/ without $OUT).
#
# Rehearse on CPU (a clean Python 3.12 venv, no network):  PY=/path/to/venv/bin/python DEVICE=cpu SMALL=1 scripts/gpu-bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
OUTDIR=${OUT:-bench/results/gpu}
RESULTS=$(mktemp -d)
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 CLIPSEARCH_BENCH_RESULTS=$RESULTS

if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:$PWD/client:$PWD/core:$PWD/server:$PWD/encoder_worker${PYTHONPATH:+:$PYTHONPATH}

if [ -n "${SMALL:-}" ]; then   # rehearsal: every step, tiny sizes
  MODELS=${MODELS:-ViT-B-32}; IMAGES=${IMAGES:-48}; UNIQUE=8; BATCH=16; PROCS=1,2; VECTORS=2000; QUERIES=16; LIMIT=300
else
  MODELS=${MODELS:-"ViT-B-32 ViT-L-14"}; IMAGES=${IMAGES:-2048}; UNIQUE=64; BATCH=256; PROCS=1,4,8,16; VECTORS=50000
  QUERIES=256; LIMIT=${LIMIT:-90}
fi
CORES=$(nproc)

pack() { tar -czf "$OUTDIR/gpu-results.tar.gz" -C "$RESULTS" . 2>/dev/null; }
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to the results folder
  local name=$1 seconds=$2; shift 2
  echo "=== $name (limit ${seconds}s) ==="
  local t=$SECONDS
  timeout -k 10 "$seconds" "$@" > "$RESULTS/$name.log" 2>&1
  local rc=$?
  grep -v -e '^wrote ' -e 'No pretrained weights' "$RESULTS/$name.log" | tail -n 25
  echo "--- $name: exit $rc after $((SECONDS - t))s"
  pack
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  echo "cores: $CORES"
  $PY -c "import torch, torchvision, numpy, PIL, grpc, google.protobuf as pb, faiss, open_clip; print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), 'torchvision', torchvision.__version__, 'numpy', numpy.__version__, 'pillow', PIL.__version__, 'grpc', grpc.__version__, 'protobuf', pb.__version__, 'faiss', faiss.__version__, 'open_clip', open_clip.__version__)"
} 2>&1 | tee "$RESULTS/env.log"

first=1
for model in $MODELS; do
  procs=$PROCS; [ $first = 1 ] || procs=$CORES   # the decode curve once; the model's forward for each
  step "stages-$model" $((LIMIT + 30)) $PY bench/bench_stages.py --model "$model" --device "$DEVICE" \
    --images "$IMAGES" --unique "$UNIQUE" --batch "$BATCH" --processes "$procs" --name "stages-$model"
  first=0
done
for model in $MODELS; do
  for decode in cpu device; do
    flag=(); [ $decode = device ] && flag=(--device-decode)
    step "ingest-$model-$decode" "$LIMIT" $PY bench/bench_ingest.py --model "$model" --device "$DEVICE" \
      --images "$IMAGES" --unique "$UNIQUE" --batch "$BATCH" --decode-threads $((CORES - 4 > 2 ? CORES - 4 : 2)) \
      --sets photos --rounds 1 "${flag[@]}" --name "ingest-$model-$decode"
  done
done
step query $((LIMIT + 60)) $PY bench/bench_query.py --model ViT-B-32 --device "$DEVICE" --vectors "$VECTORS" \
  --queries "$QUERIES" --name query
echo "results: $OUTDIR/gpu-results.tar.gz"
