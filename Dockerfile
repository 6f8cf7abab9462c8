# syntax=docker/dockerfile:1
# clipsearch, CPU image: every command of clipsearch[all] (server, router, `up`, the search page `ui`, the
# client and `search --sheet`) with torch's CPU wheels: the image for the search servers, the routers, the page,
# and encoder workers on machines without a GPU. GPU encoder workers: Dockerfile.cuda (same layout, torch's CUDA
# wheels). See docs/deployment-image.md.
#   docker build -t clipsearch .
#   docker run --rm -p 50051:50051 -v clipsearch-data:/data clipsearch up --host 0.0.0.0 --data-dir /data
# Model weights download on first start into $HF_HOME (/models; mount a volume there) unless CLIPSEARCH_MODEL is a
# local-dir:. tests/test_packaging.py checks that the COPY lines copy every package folder of pyproject.toml's
# [tool.setuptools.package-dir] and that a wheel builds from exactly those files (less .dockerignore).
ARG PYTHON_IMAGE=python:3.11-slim

# Stage 1: the clipsearch wheel, from pyproject.toml, README.md (its readme) and the package folders only.
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY core ./core
COPY server ./server
COPY encoder_worker ./encoder_worker
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Stage 2: the runtime.
FROM ${PYTHON_IMAGE}
# torch first, from its CPU index (no CUDA libraries); its layer stays cached while the code changes. The
# versions must lie inside the server and worker extras' ranges, or pip would replace them (a test checks).
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
        --index-url https://download.pytorch.org/whl/cpu
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir "$(ls /tmp/wheels/clipsearch-*.whl)[all]" && rm -rf /tmp/wheels
# Not root: uid 10001 owns the folders that compose mounts volumes on (a fresh named volume takes their owner).
RUN useradd --create-home --uid 10001 --user-group clipsearch \
    && mkdir -p /data /models /snapshots \
    && chown clipsearch:clipsearch /data /models /snapshots
USER clipsearch
WORKDIR /home/clipsearch
# server 50051, router 50052 (compose), page 8080, metrics 9090 (server) and 9091 (worker)
EXPOSE 50051 50052 8080 9090 9091
# No HEALTHCHECK: one image runs several roles (server, router, worker, page) whose health is probed
# differently; docker-compose.yml gives each service its own.
ENTRYPOINT ["clipsearch"]
CMD ["--help"]
