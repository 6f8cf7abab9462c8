#!/usr/bin/env bash
# The GPU measurements of docs/performance.md (GPU section of docs/benchmarks-journal.md) as one bounded script for a lent GPU machine (device
# tool), which has its own Python with PyTorch and no network: the worker end to end for ViT-B-32
# (device and CPU JPEG decoding, one and two workers, thumbnails on and off) and ViT-L-14, the
# pipeline's own cost with the tiny model as decode processes grow on the machine's cores, and
# TextSearch/ImageSearch latency and throughput. Per-stage rates: bench/bench_stages.py.
# Random weights (--pretrained none): no downloads.
#
# What the machine lacks travels as wheels in .whl/ (cp312, manylinux x86_64; see
# scripts/gpu-wheels.sh) and is installed with no index into /tmp/site; the machine's own torch,
# torchvision, numpy and Pillow are used. Each step has its own time limit, so one failure leaves
# the other figures; the steps STEPS names run in the order of this file. Results: JSON files and
# logs, packed into $OUT/gpu-results.tar.gz after each step
# (bench/results/gpu/ without $OUT).
#
# Rehearse on CPU, no network, with a venv holding only what the lent machine has (torch, torchvision,
# numpy, Pillow, ...) and the same wheels for its Python in WHEELS:
#   unshare -n bash -c 'ip link set lo up; PY=/path/venv/bin/python WHEELS=/path/wheels DEVICE=cpu SMALL=1 \
#     STEPS="decode-stream feed-B32-device feed-B32-workers feed-B32-profile query device-preprocess query-decompose upsert feed-B32-cpu \
#     feed-tiny feed-L14-device" scripts/gpu-bench.sh'

set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
OUTDIR=${OUT:-bench/results/gpu}
RESULTS=$(mktemp -d)
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 CLIPSEARCH_BENCH_RESULTS=$RESULTS

WHEELS=${WHEELS:-.whl}   # a rehearsal on another Python passes its own wheels folder
if [ -d "$WHEELS" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:$PWD/client:$PWD/core:$PWD/server:$PWD/encoder_worker:$PWD/devkit${PYTHONPATH:+:$PYTHONPATH}

if [ -n "${SMALL:-}" ]; then   # rehearsal: every step, tiny sizes
  IMAGES=64; UNIQUE=8; BATCH=16; TINY_IMAGES=64; VECTORS=2000; QUERIES=16; GPU_PROCS=1
else
  IMAGES=${IMAGES:-4096}; UNIQUE=64; BATCH=256; TINY_IMAGES=2000; VECTORS=20000; QUERIES=256; GPU_PROCS=14
fi
CORES=$(nproc)

# The whole script ends within BUDGET seconds (the device call's limit, less a margin): a step gets at
# most the time left, and one with under 30 s left is skipped, so the results packed so far come back.
BUDGET=${BUDGET:-570}
SKIPPED=""  # steps left out for lack of time: what a second call on the warm machine runs (STEPS=...)
pack() {  # atomically: a call cut short never leaves a half-written archive
  tar -czf "$OUTDIR/.gpu-results.tmp" -C "$RESULTS" . 2>/dev/null && mv "$OUTDIR/.gpu-results.tmp" "$OUTDIR/gpu-results.tar.gz"
}
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to the results folder
  local name=$1 seconds=$2; shift 2
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 30 ]; then echo "=== $name skipped: ${left}s left of ${BUDGET}s ==="; SKIPPED+=" $name"; return; fi
  [ "$seconds" -gt "$left" ] && seconds=$left
  echo "=== $name (limit ${seconds}s) ==="
  local t=$SECONDS
  timeout -k 10 "$seconds" "$@" > "$RESULTS/$name.log" 2>&1
  local rc=$?
  grep -v -e '^wrote ' -e 'No pretrained weights' "$RESULTS/$name.log" | tail -n 14
  echo "--- $name: exit $rc after $((SECONDS - t))s"
  pack
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  echo "cores: $CORES"
  $PY -c "import torch, torchvision, numpy, PIL, grpc, google.protobuf as pb, faiss, open_clip; print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), 'torchvision', torchvision.__version__, 'numpy', numpy.__version__, 'pillow', PIL.__version__, 'grpc', grpc.__version__, 'protobuf', pb.__version__, 'faiss', faiss.__version__, 'open_clip', open_clip.__version__)"
} 2>&1 | tee "$RESULTS/env.log"

# First the device-decode thread beside the model without the rest of the pipeline (bench_decode_stream.py,
# ~30 s each): decoding on the model's CUDA stream (where TorchCodec's decoder ends by waiting for every
# kernel the model has queued) against a stream of its own (--decode-stream on, the default since the
# eighth session), alternated, every crop and vector checked against decoding and encoding one batch
# after the other; then the same with torchvision's decoder (the fallback without TorchCodec).
# The worker end to end (bench/bench_feed.py): submit by path or upload until searchable, 1024x768
# photo-like JPEGs, images/s, the model's busy share and CPU ms per image of each process. A ViT-B-32
# run costs about 70-90 s on the lent H200 machine (writing the files, starting Redis, the server and the
# workers together), so the steps are in order of what matters most, and the last ones run if BUDGET
# leaves time for them; STEPS picks others. feed-B32-device compares the two decode streams in the whole
# pipeline (thumbnails off), then runs the default (thumbnails on) and 4 decode threads instead of 12
# (with device decoding they only read files and encode thumbnails, and all of them want the GIL). ViT-L-14 end to end and two and four workers per GPU follow: three
# leases have no figure for them yet (the third lost a batch in each, now reported with reasons). The
# profile then samples only the threads holding the GIL (--gil).
STEPS=${STEPS:-"decode-stream feed-B32-device feed-L14-device feed-B32-workers query-decompose query feed-B32-profile device-preprocess"}
want() { [[ " $STEPS " == *" $1 "* ]]; }
GPU=(--model ViT-B-32 --pretrained none --width 1024 --height 768 --images "$IMAGES" --unique "$UNIQUE"
     --batch "$BATCH" --no-stages)
ON_GPU="--device $DEVICE --threads 0 --decode-threads $((CORES - 4 > 2 ? CORES - 4 : 2)) --device-decode"
export PATH=/tmp/site/bin:$PATH   # py-spy from the carried wheels
want decode-stream && step decode-stream 70 $PY bench/bench_decode_stream.py --device "$DEVICE" \
  --batches $((IMAGES / BATCH / 2)) --batch "$BATCH" --name decode-stream
{ want decode-stream || want decode-stream-torchvision; } && step decode-stream-torchvision 60 $PY bench/bench_decode_stream.py --device "$DEVICE" \
  --batches $((IMAGES / BATCH / 2)) --batch "$BATCH" --backend torchvision --rounds 2 --name decode-stream-torchvision
want feed-B32-device && step feed-B32-device 260 $PY bench/bench_feed.py "${GPU[@]}" --worker-args "$ON_GPU" \
  --runs "path:0 --thumbnail-size 0 --decode-stream off,path:0 --thumbnail-size 0,path:0,path:0 --thumbnail-size 0 \
--decode-threads 4" --name feed-B32-device
want feed-L14-device && step feed-L14-device 150 $PY bench/bench_feed.py "${GPU[@]}" --model ViT-L-14 \
  --images $((IMAGES / 2)) --worker-args "$ON_GPU" --runs path:0 --name feed-L14-device
want feed-B32-workers && step feed-B32-workers 220 $PY bench/bench_feed.py "${GPU[@]}" --worker-args "$ON_GPU" \
  --runs "path:0::2 --thumbnail-size 0,path:0::4 --thumbnail-size 0" --name feed-B32-workers
# TextSearch's time split (encode, search, the per-call path), gRPC and in-process alternated.
want query-decompose && step query-decompose 120 $PY bench/bench_query.py --model ViT-B-32 --device "$DEVICE" \
  --vectors "$VECTORS" --queries "$QUERIES" --decompose --name query-decompose
want query && step query 150 $PY bench/bench_query.py --model ViT-B-32 --device "$DEVICE" --vectors "$VECTORS" \
  --queries "$QUERIES" --name query
want feed-B32-profile && step feed-B32-profile 110 $PY bench/bench_feed.py "${GPU[@]}" --worker-args "$ON_GPU" \
  --runs "path:0 --thumbnail-size 0" --profile "$RESULTS/profiles" --gil --name feed-B32-profile
# The device-decode path's own cost around the decoder (same-sized images resized in one call, 256 px
# thumbnails scaled there): torch operator calls per batch and decode + preprocess img/s.
want device-preprocess && step device-preprocess 80 $PY bench/bench_device_preprocess.py --device "$DEVICE" \
  --images $((BATCH * 2)) --batch "$BATCH" --rounds 1 --thumbnail 256 --name device-preprocess
# The server's CPU per record of UpsertVectors on this machine's cores (what one server can take).
want upsert && step upsert 120 $PY bench/bench_upsert.py --records $((VECTORS)) --pushers 4 --name upsert
want feed-B32-cpu && step feed-B32-cpu 120 $PY bench/bench_feed.py "${GPU[@]}" \
  --worker-args "--device $DEVICE --threads 0" --runs "path:$GPU_PROCS" --name feed-B32-cpu
# The pipeline's own cost with the tiny model on the CPU, and how it grows with decode processes.
want feed-tiny && step feed-tiny 200 $PY bench/bench_feed.py --images "$TINY_IMAGES" \
  --runs path:0:1,path:1,path:2,path:4,path:8 --name feed-tiny
[ -n "$SKIPPED" ] && echo "skipped for lack of time; a second call can run them: STEPS=\"${SKIPPED# }\""
echo "results: $OUTDIR/gpu-results.tar.gz"
