"""Every Prometheus metric of flagstream, declared once, on the registry the worker is given.

Names carry their unit; labels are bounded sets (outcomes, codes, routes), never a user key.
The composition root (`app.main`) makes one `Metrics` and hands it to whatever counts; a test
or a second worker in one process passes its own `CollectorRegistry`.
"""

from __future__ import annotations

import math
import time

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info

from app.infra.consumer_lag import ConsumerLag
from app.infra.records import DeadLetterCode

__all__ = ["Metrics"]


class Metrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.flag_changes = Counter(
            "flagstream_flag_changes_total",
            "Flag-change commands decided by this worker's agent, by outcome.",
            ["outcome"],  # applied | rejected | duplicate
            registry=registry,
        )
        self.dead_letters = Counter(
            "flagstream_dead_letters_total",
            "Records sent to the dead-letter topic by this worker, by code.",
            ["code"],
            registry=registry,
        )
        self.changelog_records = Counter(
            "flagstream_changelog_records_total",
            "Flag-table changelog records read by this worker, by result.",
            # applied | skipped | fence | undecodable | invalid | unsigned | forged (the last
            # three never served; unsigned and forged: app.infra.changelog_signing)
            ["result"],
            registry=registry,
        )
        for refused in ("unsigned", "forged"):  # exported at 0: an alert needs the series
            self.changelog_records.labels(refused)
        # 0 while the changelog is neither signed nor checked (no FLAGSTREAM_CHANGELOG_KEY):
        # any producer allowed to write it can then change a flag. Alert on 0 in production.
        self.changelog_signed = Gauge(
            "flagstream_changelog_signed",
            "1 when changelog records are signed and only signed ones applied, else 0.",
            registry=registry,
        )
        # From the writer's produce timestamp to the moment this worker's table holds the
        # change. Buckets from 5 ms (same host) to 30 s (a worker catching up after a pause).
        self.propagation_seconds = Histogram(
            "flagstream_flag_propagation_seconds",
            "Flag change produced -> applied on this worker.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=registry,
        )
        # Produce time of the newest change this worker's table applied; NaN until one.
        self.newest_change_produced_at = math.nan
        self.newest_change_age_seconds = Gauge(
            "flagstream_flag_newest_change_age_seconds",
            "Seconds since the newest flag change this worker applied was produced (NaN before "
            "the first): how old the flags it serves are, comparable across workers.",
            registry=registry,
        )
        self.newest_change_age_seconds.set_function(
            lambda: time.time() - self.newest_change_produced_at
        )
        self.worker = Info(
            "flagstream_worker",
            "Which worker this is (FLAGSTREAM_WORKER_ID) and its deployment.",
            registry=registry,
        )
        self.ready = Gauge(
            "flagstream_ready",
            "1 once this worker's flag table has caught up after start.",
            registry=registry,
        )
        self.broker_reachable = Gauge(
            "flagstream_broker_reachable",
            "1 while the broker answers this worker's probe; 0: serving last known flags, "
            "no writes.",
            registry=registry,
        )
        self.flags_stale_seconds = Gauge(
            "flagstream_flags_stale_seconds",
            "Seconds this worker has served its last known flags without reaching the broker "
            "(tables/broker_watch.py); 0 while the broker answers.",
            registry=registry,
        )
        self.table_rebuilds = Counter(
            "flagstream_flag_table_rebuilds_total",
            "Flag tables moved aside and rebuilt because the broker's changelog was another "
            "log (a broker that lost its data).",
            registry=registry,
        )
        self.http_requests = Counter(
            "flagstream_http_requests_total",
            "HTTP answers, by route name and status (app/web/http_metrics.py; the OFREP fast "
            "path counts its refusals and 500s here, its evaluations in "
            "flagstream_evaluations_total).",
            ["route", "status"],  # route: from ROUTE_NAMES, a path template, or "unmatched"
            registry=registry,
        )
        self.stream_clients = Gauge(
            "flagstream_stream_clients",
            "Open change-stream (SSE) connections.",
            registry=registry,
        )
        self.stream_refusals = Counter(
            "flagstream_stream_refusals_total",
            "Change streams refused at a cap (FLAGSTREAM_MAX_STREAMS, _PER_KEY), by which cap.",
            ["cap"],  # per_key (429) | total (503)
            registry=registry,
        )
        self.stream_environments = Gauge(
            "flagstream_stream_environments",
            "Environments this worker keeps a subscriber set for (those with an open stream).",
            registry=registry,
        )
        self.exposures = Counter(
            "flagstream_exposures_total",
            "Experiment exposures, by outcome.",
            # produced | dropped | rejected (bad items posted to /api/v1/exposures) |
            # unattributable (an evaluation whose targeting key is over 256 characters)
            ["outcome"],
            registry=registry,
        )
        self.metric_events = Counter(
            "flagstream_metric_events_total",
            "Experiment metric events, by outcome.",
            # produced | dropped | rejected (bad items posted to /api/v1/metric-events)
            ["outcome"],
            registry=registry,
        )
        self.evaluation_requests = Counter(
            "flagstream_evaluation_requests_total",
            "Evaluation requests read from Kafka by this worker, by outcome.",
            # evaluated | malformed | unanswered (a result or dead letter was not produced)
            ["outcome"],
            registry=registry,
        )
        self.fast_path_handoffs = Counter(
            "flagstream_ofrep_fast_path_handoffs_total",
            "Connections the OFREP fast path handed to aiohttp, by why (app/web/fast_path.py).",
            # other (another request, or a head aiohttp must judge) | refused (no SDK key,
            # seen at the head) | declined (body, recovering) | malformed (llhttp refused the
            # head, or it asked for an upgrade)
            ["reason"],
            registry=registry,
        )
        self.fast_path_connections = Counter(
            "flagstream_ofrep_fast_path_connections_total",
            "HTTP connections accepted; each starts on the OFREP fast path.",
            registry=registry,
        )
        self.shed_requests = Counter(
            "flagstream_shed_requests_total",
            "OFREP requests answered 429 with Retry-After because the event loop lagged past "
            "FLAGSTREAM_SHED_LOOP_LAG_MS or the loop turn used its time budget "
            "(app/web/overload.py), by route template.",
            ["path"],  # /ofrep/v1/evaluate/flags/{key} | /ofrep/v1/evaluate/flags
            registry=registry,
        )
        self.loop_lag_seconds = Gauge(
            "flagstream_event_loop_lag_seconds",
            "The event loop's lasting lag while OFREP requests come: the median of its last "
            "three timer samples (0 when idle), what the shedder reads.",
            registry=registry,
        )
        self.evaluation_results_in_flight = Gauge(
            "flagstream_evaluation_results_in_flight",
            "Kafka evaluation results and dead letters produced but not yet acknowledged.",
            registry=registry,
        )
        self.evaluation_results_in_flight_peak = Gauge(
            "flagstream_evaluation_results_in_flight_peak",
            "The most Kafka evaluation results in flight at once since start; never above "
            "FLAGSTREAM_EVALUATION_MAX_IN_FLIGHT.",
            registry=registry,
        )
        self.evaluation_backpressure_seconds = Counter(
            "flagstream_evaluation_backpressure_seconds_total",
            "Time the Kafka evaluation loop stopped consuming because "
            "FLAGSTREAM_EVALUATION_MAX_IN_FLIGHT results awaited their acknowledgement.",
            registry=registry,
        )
        self.attribution_records = Counter(
            "flagstream_attribution_records_total",
            "Exposures and metric events read by this worker's attribution, by source topic and"
            " outcome.",
            # folded | redelivered (at or below the stored offset: skipped) | malformed (a
            # dead letter)
            ["source", "outcome"],
            registry=registry,
        )
        self.attribution_partitions = Gauge(
            "flagstream_attribution_partitions",
            "Source partitions whose attribution this worker owns.",
            registry=registry,
        )
        self.attribution_restores = Counter(
            "flagstream_attribution_restores_total",
            "Partitions caught up from `experiment-state` when assigned, by outcome.",
            ["outcome"],  # current (nothing to apply) | restored (state applied, rebuilt)
            registry=registry,
        )
        self.attribution_batch_seconds = Histogram(
            "flagstream_attribution_batch_seconds",
            "Time to fold a batch, log it to `experiment-state` and write it locally.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.experiment_stats_records = Counter(
            "flagstream_experiment_stats_records_total",
            "Records of `experiment-stats` read by this worker's results feed, by outcome.",
            # kept (newest of its key) | older (offsets at or below the kept one's) |
            # rejected (not a Partial or Progress: a dead letter) | dropped (beyond the
            # feed's bounds on environments and experiments)
            ["outcome"],
            registry=registry,
        )
        self.guardrail_rollbacks = Counter(
            "flagstream_guardrail_rollbacks_total",
            "Experiments rolled back to their control by this worker because a guardrail "
            "metric showed harm (app/experiments/guardrails.py), by outcome.",
            # applied (this worker's command made the new version: summed over workers, one
            # per rollback) | already (the change id was applied before, by any worker) |
            # refused (a dead letter, e.g. the flag changed meanwhile) | unanswered (no outcome
            # within the write timeout or the broker unavailable: checked again on a change)
            ["outcome"],
            registry=registry,
        )
        self._start_alerted_series_at_zero()
        # Consumers register with `consumer_lag.watch` once started (app/infra/consumer_lag.py).
        self.consumer_lag = ConsumerLag()
        registry.register(self.consumer_lag)

    def _start_alerted_series_at_zero(self) -> None:
        """Export the series deploy/alerts.yml reads with increase() at 0 from the start.

        A labelled counter appears at its first event, already at 1: Prometheus sees no 0
        before it, so increase() misses that event and an alert on the first dead letter or
        rollback would wait for the second.
        """
        for code in DeadLetterCode:
            self.dead_letters.labels(code.value)
        for outcome in ("applied", "refused", "unanswered"):
            self.guardrail_rollbacks.labels(outcome)
        self.exposures.labels("dropped")
        self.metric_events.labels("dropped")

    def applied_change(self, produced_at: float) -> None:
        """Remember the produce time of a change the table applied, if the newest so far."""
        if not produced_at <= self.newest_change_produced_at:  # NaN before the first
            self.newest_change_produced_at = produced_at
