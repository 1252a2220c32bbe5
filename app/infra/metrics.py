"""Every Prometheus metric of flagstream, declared once.

Names carry their unit; labels are bounded sets (outcomes, codes, routes), never a user key.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

FLAG_CHANGES = Counter(
    "flagstream_flag_changes_total",
    "Flag-change commands decided by this worker's agent, by outcome.",
    ["outcome"],  # applied | rejected | duplicate
)
DEAD_LETTERS = Counter(
    "flagstream_dead_letters_total",
    "Records sent to the dead-letter topic by this worker, by code.",
    ["code"],
)
CHANGELOG_RECORDS = Counter(
    "flagstream_changelog_records_total",
    "Flag-table changelog records read by this worker, by result.",
    ["result"],  # applied | skipped | fence | undecodable
)
# From the writer's produce timestamp to the moment this worker's table holds the change.
# Buckets from 5 ms (same host) to 30 s (a worker catching up after a pause).
PROPAGATION_SECONDS = Histogram(
    "flagstream_flag_propagation_seconds",
    "Flag change produced -> applied on this worker.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
WORKER = Info(
    "flagstream_worker", "Which worker this is (FLAGSTREAM_WORKER_ID) and its deployment."
)
READY = Gauge("flagstream_ready", "1 once this worker's flag table has caught up after start.")
BROKER_REACHABLE = Gauge(
    "flagstream_broker_reachable",
    "1 while the broker answers this worker's probe; 0: serving last known flags, no writes.",
)
TABLE_REBUILDS = Counter(
    "flagstream_flag_table_rebuilds_total",
    "Flag tables moved aside and rebuilt because the broker's changelog was another log "
    "(a broker that lost its data).",
)
HTTP_REQUESTS = Counter(
    "flagstream_http_requests_total",
    "HTTP answers, by route name and status (app/web/http_metrics.py; the OFREP fast path"
    " counts its refusals and 500s here, its evaluations in flagstream_evaluations_total).",
    ["route", "status"],  # route: a name from ROUTE_NAMES, a path template, or "unmatched"
)
STREAM_CLIENTS = Gauge("flagstream_stream_clients", "Open change-stream (SSE) connections.")
STREAM_REFUSALS = Counter(
    "flagstream_stream_refusals_total",
    "Change streams refused at a cap (FLAGSTREAM_MAX_STREAMS, _PER_KEY), by which cap.",
    ["cap"],  # per_key (429) | total (503)
)
STREAM_ENVIRONMENTS = Gauge(
    "flagstream_stream_environments",
    "Environments this worker keeps a subscriber set for (those with an open stream).",
)
EXPOSURES = Counter(
    "flagstream_exposures_total",
    "Experiment exposures, by outcome.",
    ["outcome"],  # produced | dropped | rejected (bad items posted to /api/v1/exposures)
)
EVALUATION_REQUESTS = Counter(
    "flagstream_evaluation_requests_total",
    "Evaluation requests read from Kafka by this worker, by outcome.",
    ["outcome"],  # evaluated | malformed | unanswered (a result or dead letter was not produced)
)
FAST_PATH_HANDOFFS = Counter(
    "flagstream_ofrep_fast_path_handoffs_total",
    "Connections the OFREP fast path handed to aiohttp, by why (app/web/fast_path.py).",
    # other (another request, or a head aiohttp must judge) | refused (no SDK key, seen at
    # the head) | declined (body, recovering) | malformed (llhttp refused the head, or it
    # asked for an upgrade)
    ["reason"],
)
FAST_PATH_CONNECTIONS = Counter(
    "flagstream_ofrep_fast_path_connections_total",
    "HTTP connections accepted; each starts on the OFREP fast path.",
)
