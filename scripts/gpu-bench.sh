#!/usr/bin/env bash
# The GPU measurements of docs/BENCHMARKS.md, as one script of about 5 minutes for a lent GPU machine
# (device tool): worker throughput for ViT-B-32 and ViT-L-14 with and without device JPEG decoding,
# and TextSearch latency/throughput on the GPU. Random weights (--pretrained none): no downloads.
# Results land in $OUT (or bench/results) as JSON, with the card's name.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
PY=.venv/bin/python
export CLIPSEARCH_BENCH_RESULTS=${OUT:-bench/results}
nvidia-smi --query-gpu=name,memory.total --format=csv
for model in ViT-B-32 ViT-L-14; do
  $PY bench/bench_ingest.py --model $model --pretrained none --device cuda --images 1024 --batch 256 \
    --decode-threads 12 --sets photos --name gpu-ingest-$model
  $PY bench/bench_ingest.py --model $model --pretrained none --device cuda --images 1024 --batch 256 \
    --decode-threads 12 --sets photos --device-decode --name gpu-ingest-$model-device-decode
done
$PY bench/bench_query.py --model ViT-B-32 --pretrained none --device cuda --vectors 100000 --queries 256 --name gpu-query
