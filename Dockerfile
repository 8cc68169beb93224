# One image for every Python service of docker-compose.yml (MLflow server, Ray head, Ray workers,
# Optuna dashboard, launcher), so that the driver and every Ray node run the same Ray and Python.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install --yes --no-install-recommends git curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 ghm \
    && mkdir -p /shared /mlartifacts \
    && chown ghm:ghm /shared /mlartifacts

WORKDIR /app
COPY --chown=ghm:ghm . .
# PyPI's torch==2.14.1 for Linux x86_64 is the CUDA build: the GPU workers use it as is.
# compat: the checkout itself on sys.path, so Hydra discovers hydra_plugins/ wherever a process starts.
RUN pip install -e ".[auth]" --config-settings editable_mode=compat

USER ghm
CMD ["python", "launch.py", "--help"]
