# One image for the server and the worker (CPU build; for GPUs base it on a CUDA runtime image and
# install the CUDA wheels of torch). Weights download on first start unless CLIPSEARCH_MODEL is a local-dir.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY client ./client
COPY server ./server
COPY encoder_worker ./encoder_worker
RUN pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1" && pip install --no-cache-dir ".[all]"
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["clipsearch"]
