# Stand-in for python:3.11-slim-bookworm: Debian 12's own Python 3.11 as a virtual environment in
# /usr/local, so that `python` and `pip` are on PATH in /usr/local/bin and pip installs into
# /usr/local/lib/python3.11/site-packages, as in the official image.
FROM ghm-ci/debian:bookworm-minbase
ENV LANG=C.UTF-8
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3.11 python3.11-venv ca-certificates netbase tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /usr/local \
    && python --version && pip --version
CMD ["python3"]
