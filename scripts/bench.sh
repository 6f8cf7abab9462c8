#!/usr/bin/env bash
# Runs every benchmark (results: bench/results/*.json, plot: docs/index-recall-qps.png; figures go
# into docs/performance.md and docs/benchmarks-journal.md by hand). Takes about an hour on a 2-core CPU, mostly the 1M-vector index.
#   ./scripts/bench.sh               # everything
#   ./scripts/bench.sh ingest query  # a subset: index, kinds, ingest, stages, feed, reads, preprocess, upsert, query, coldstart, stop, writes, snapshots, catchup, router, memory
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/python -m pip install --quiet matplotlib
PY=.venv/bin/python
parts=("$@")
has() { [ ${#parts[@]} -eq 0 ] || [[ " ${parts[*]} " == *" $1 "* ]]; }
has index && $PY bench/bench_index.py --n 100000 --n 1000000 --queries 300
has kinds && $PY bench/bench_indexes.py --n 1000000 --n-graph 100000 --queries 200
has ingest && $PY bench/bench_ingest.py --images 192
has stages && $PY bench/bench_stages.py --model ViT-B-32 --device cpu --images 128 --batch 32 --processes 1,2
has feed && $PY bench/bench_feed.py
has reads && $PY bench/bench_read_file.py
has preprocess && $PY bench/bench_device_preprocess.py --rounds 2 && \
  $PY bench/bench_device_preprocess.py --rounds 2 --group --name device-preprocess-grouped
has upsert && $PY bench/bench_upsert.py --records 20480 --rounds 3 && \
  $PY bench/bench_upsert.py --records 61440 --name upsert-with-seals
has query && $PY bench/bench_query.py --vectors 100000
has query && $PY bench/bench_query.py --vectors 20000 --queries 64 --pin --name query-pinned
has coldstart && $PY bench/bench_coldstart.py --n 1000000
has stop && $PY bench/bench_stop.py --rounds 3
has writes && $PY bench/bench_write_under_load.py --vectors 20000
has snapshots && $PY bench/bench_snapshot_stall.py --vectors 100000
has catchup && $PY bench/bench_catchup.py --vectors 20000 --writes 300
has memory && $PY bench/bench_image_memory.py
has router && $PY bench/bench_router.py && $PY bench/bench_router.py --model ViT-B-32 --pretrained none --queries 150 --name router-vitb32
