# One image for every Python service of docker-compose.yml (MLflow server, Ray head, Ray workers,
# Optuna dashboard, launcher), so that the driver and every Ray node run the same Ray and Python.
#
# Behind a TLS-intercepting proxy, give pip its CA bundle as a build secret (used only when given):
#   docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt --tag ghm-sweep:latest .
FROM python:3.11-slim-bookworm AS requirements
# The dependencies of pyproject.toml (and its `auth` extra) as a requirements file: the layer that
# installs them is rebuilt only when they change, not when the source or a tool's settings do.
COPY pyproject.toml /
RUN python -c "import tomllib; p = tomllib.load(open('/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['auth']))" > /requirements.txt

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

# PyPI's torch==2.14.1 for Linux x86_64 is the CUDA build: the GPU workers use it as is.
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=ca-bundle \
    if [ -f /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && pip install --requirement /tmp/requirements.txt "setuptools>=68"

WORKDIR /app
COPY --chown=ghm:ghm . .
# The project itself, editable (its configs and caches are found beside the source): seconds, no download.
# compat: the checkout itself on sys.path, so Hydra discovers hydra_plugins/ wherever a process starts.
RUN pip install --no-deps --no-build-isolation --editable . --config-settings editable_mode=compat

USER ghm
CMD ["python", "launch.py", "--help"]
