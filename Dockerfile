# syntax=docker/dockerfile:1
#
# flagstream worker image: `docker build -t flagstream .`, then
#   docker run -e FLAGSTREAM_BROKERS=kafka:9092 -e FLAGSTREAM_ADMIN_TOKEN=... -p 6066:6066 flagstream
# The entrypoint is the `flagstream` CLI, so `docker run ... flagstream flags list --env dev`
# works too. docker-compose.yml runs two workers next to a 3-node Kafka cluster.
#
# Every dependency ships a manylinux wheel (rocksdict, mmh3, faust-streaming, aiokafka, ...),
# so no compiler is needed. The build stage installs into a virtualenv that the runtime stage
# copies, which leaves the sources and build leftovers out of the final image.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/flagstream
WORKDIR /src
# README.m[d]: copied if present (pyproject names it as the readme), no error if not.
COPY pyproject.toml README.m[d] ./
COPY app ./app
COPY agents ./agents
COPY tables ./tables
RUN /opt/flagstream/bin/pip install . \
    && /opt/flagstream/bin/flagstream --help >/dev/null

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/flagstream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLAGSTREAM_DATA_DIR=/var/lib/flagstream \
    FLAGSTREAM_WEB_HOST=0.0.0.0 \
    FLAGSTREAM_WEB_PORT=6066
RUN groupadd --system --gid 10001 flagstream \
    && useradd --system --uid 10001 --gid flagstream --home-dir /var/lib/flagstream \
        --no-create-home --shell /usr/sbin/nologin flagstream \
    && mkdir -p /var/lib/flagstream \
    && chown flagstream:flagstream /var/lib/flagstream
COPY --from=build /opt/flagstream /opt/flagstream

USER flagstream
WORKDIR /var/lib/flagstream
# RocksDB tables (flags, history, change-stream log) and Faust's data dir. Each worker needs
# its own volume: two workers must never share one.
VOLUME ["/var/lib/flagstream"]
# The HTTP API, /healthz, /readyz and /metrics (FLAGSTREAM_WEB_PORT).
EXPOSE 6066

# Liveness only: /healthz answers as soon as the web server runs. Readiness (the flag table
# has caught up) is /readyz, which docker-compose.yml uses for its healthcheck.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FLAGSTREAM_WEB_PORT', '6066'), timeout=4)"]

# Exec form: python is PID 1 and gets SIGTERM, which Faust handles with a clean shutdown.
ENTRYPOINT ["flagstream"]
CMD ["worker"]
