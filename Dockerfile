# syntax=docker/dockerfile:1
#
# seggpt-backend: one image for the Label Studio ML backend (`seggpt-backend serve`, the default
# command) and the GPU worker (`seggpt-backend worker`). How to run it: docs/DEPLOY.md.
#
#   docker build -t seggpt-backend .
#   docker build --build-arg PREFETCH_WEIGHTS=BAAI/seggpt-vit-large -t seggpt-backend:vitl .
#
# Why CUDA 12.6: torch 2.13 (pinned in requirements.txt) publishes exactly one CUDA 12.x build,
# cu126 (CUDA 12.6.3, GPUs from Maxwell to Hopper); its other builds are CUDA 13.0 (the PyPI
# default) and 13.2, which need a CUDA 13 driver (>= 580). The cu126 wheel brings its own CUDA
# libraries as nvidia-*-cu12 packages; the base image is the matching 12.6 runtime so that its
# NVIDIA_REQUIRE_CUDA=cuda>=12.6 makes the NVIDIA container toolkit refuse, with a clear message,
# a host driver too old for those libraries (instead of a failure at the first kernel). The build
# checks that the installed torch's CUDA matches the base image's. Blackwell GPUs (sm_100/sm_120)
# need the CUDA 13 build:
#   --build-arg CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04 \
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

# The PyTorch wheel index whose CUDA matches CUDA_IMAGE (cu126 <-> 12.6).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# A weights spec to download at build time into /opt/seggpt/weights (empty: none). A Hugging Face
# repo id `org/name` lands in /opt/seggpt/weights/org--name; run with that path as SEGGPT_WEIGHTS.
ARG PREFETCH_WEIGHTS=
# The unprivileged user's uid (Ubuntu 24.04 images already use 1000 for `ubuntu`).
ARG APP_UID=10001

# Ubuntu 24.04's python3 is 3.12 (the package needs >= 3.11); a venv because the system
# interpreter is externally managed (PEP 668). util-linux provides flock for the entrypoint.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates util-linux \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first (their layer survives source edits). torch comes from the CUDA index at the
# exact version requirements.txt pins; the rest from PyPI, where the installed torch already
# satisfies the pin (a `+cu126` local version matches `==2.13.0`).
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
    && torch_pin="$(grep -E '^torch[ =<>~!]' /tmp/requirements.txt | cut -d'#' -f1 | tr -d ' ')" \
    && test -n "$torch_pin" \
    && /opt/venv/bin/pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "$torch_pin" \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt \
    && /opt/venv/bin/python -c "import os, torch; cuda = torch.version.cuda; want = os.environ.get('CUDA_VERSION', cuda or ''); assert cuda and cuda.split('.')[:2] == want.split('.')[:2], f'torch {torch.__version__} has CUDA {cuda}, the base image has {want}'; print('torch', torch.__version__, 'CUDA', cuda)" \
    && rm /tmp/requirements.txt

# The package itself (non-editable: the image does not need the sources).
COPY pyproject.toml README.md /tmp/src/
COPY seggpt_backend /tmp/src/seggpt_backend
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /tmp/src && rm -rf /tmp/src

COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/seggpt-entrypoint

# ~/.cache is the volume: the Hugging Face cache (HF_HOME) and MODEL_DIR (checkpoint downloads)
# persist there and are shared by every container.
RUN useradd --create-home --home-dir /home/seggpt --uid "$APP_UID" --shell /usr/sbin/nologin seggpt \
    && mkdir -p /home/seggpt/.cache/huggingface \
        /home/seggpt/.cache/model_dir /opt/seggpt/weights \
    && chown -R seggpt:seggpt /home/seggpt /opt/seggpt

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/home/seggpt/.cache/huggingface \
    MODEL_DIR=/home/seggpt/.cache/model_dir

USER seggpt
WORKDIR /home/seggpt

RUN if [ -n "$PREFETCH_WEIGHTS" ]; then \
        python -c "import sys; from pathlib import Path; from seggpt_backend.model.checkpoint import load_weights; w = load_weights(sys.argv[1], download_dir=Path('/opt/seggpt/weights'), timeout_s=60.0); print('prefetched', sys.argv[1], w.version)" "$PREFETCH_WEIGHTS" \
        && ls -lR /opt/seggpt/weights; \
    fi

VOLUME ["/home/seggpt/.cache"]
EXPOSE 9090

# /health needs no auth and answers 200 only when the backend can serve (503 when Redis is down).
# Python's stdlib, so the image needs no curl; any error (refused, timeout, 503) exits 1.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % (os.environ.get('PORT') or 9090), timeout=5)"

ENTRYPOINT ["/usr/local/bin/seggpt-entrypoint"]
CMD ["seggpt-backend", "serve"]
