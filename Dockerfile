# One image for every Python service of docker-compose.yml (MLflow server, Ray head, Ray workers,
# Optuna dashboard, launcher), so that the driver and every Ray node run the same Ray and Python.
#
# Behind a TLS-intercepting proxy, give pip its CA bundle as a build secret (used only when given):
#   docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt --tag ghm-sweep:latest .
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install --yes --no-install-recommends git curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 ghm \
    && mkdir -p /app /shared /mlartifacts \
    && chown ghm:ghm /app /shared /mlartifacts

WORKDIR /app
# The dependencies in a layer of their own, installed from pyproject.toml and an empty package, so that
# a change of the source rebuilds in seconds. PyPI's torch==2.14.1 for Linux x86_64 is the CUDA build:
# the GPU workers use it as is.
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca-bundle \
    if [ -f /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && mkdir ghm && touch ghm/__init__.py README.md \
    && pip install ".[auth]" "setuptools>=68" \
    && pip uninstall --yes ghm-sweep \
    && rm -rf ghm README.md build ./*.egg-info

COPY --chown=ghm:ghm . .
# The project itself, editable (its configs and caches are found beside the source); no download.
RUN pip install --no-deps --no-build-isolation --editable .

USER ghm
CMD ["python", "launch.py", "--help"]
