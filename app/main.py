"""The composition root: builds one worker process of flagstream and wires it.

Everything a worker is made of is built here, once, from `Settings`: the Faust app, the flag
table and its replication, the evaluator, the producers, the agents and the HTTP routes. Each
part is handed what it needs; no module of the project imports this one (the import-linter
contract in pyproject.toml says so). `flagstream worker` (`app.cli.commands`) calls `build`
and runs the app.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust
from prometheus_client import REGISTRY, CollectorRegistry

from agents.dead_letters import DeadLetterSender
from agents.evaluations import EvaluationRequests
from agents.experiments import ExperimentAttribution
from agents.flag_changes import FlagChangeAgent
from agents.guardrails import GuardrailWatch
from app.control.dead_letters import DeadLetterReader
from app.control.outcomes import Outcomes
from app.control.writer import Writer
from app.evaluation.evaluator import Evaluator
from app.evaluation.live_flags import LiveFlags
from app.evaluation.stats import EvaluationStats
from app.experiments.exposures import ExposureSink, exposure_channel
from app.experiments.health import ExperimentHealth
from app.experiments.metric_events import metric_event_channel
from app.experiments.record_sink import RecordSink
from app.experiments.stats_feed import ExperimentStatsFeed
from app.infra.fetch_wait import bound_fetch_wait
from app.infra.kafka_security import faust_credentials
from app.infra.log_limit import RepeatLimiter
from app.infra.metrics import Metrics
from app.infra.no_auto_topics import refuse_topic_auto_creation
from app.infra.prompt_tables import PromptTableManager
from app.infra.quiet_monitor import QuietMonitor
from app.infra.settings import Settings
from app.infra.shutdown import ShutdownWatchdog
from app.infra.topics import Topics
from app.web.admin import AdminApi
from app.web.auth import Credentials
from app.web.change_feed import ChangeFeed
from app.web.evaluate import EvaluateApi
from app.web.experiments import ExperimentsApi
from app.web.exposures import ExposuresApi
from app.web.fast_path import FastPathWeb
from app.web.http_metrics import response_counter
from app.web.metric_events import MetricEventsApi
from app.web.metrics_site import MetricsSite
from app.web.ofrep import OfrepApi
from app.web.ofrep_events import OfrepEvents
from app.web.ops import HealthApi
from app.web.stream import ChangeStreamApi
from app.web.ui import DashboardUi
from tables.broker_watch import BrokerWatch
from tables.flags import FlagTable
from tables.replication import FlagReplication

__all__ = ["Worker", "build", "faust_app_for"]


@dataclass(frozen=True, slots=True)
class Worker:
    """One worker's parts, as built: what the CLI runs and what tests look into."""

    settings: Settings
    app: faust.App
    flags: FlagTable
    replication: FlagReplication
    broker_watch: BrokerWatch
    live_flags: LiveFlags
    evaluator: Evaluator
    exposures: ExposureSink
    writer: Writer


def faust_app_for(settings: Settings) -> faust.App:
    """The Faust app of a worker: its broker, web server and consumer settings."""
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{host}" for host in settings.brokers],
        broker_credentials=faust_credentials(settings),  # TLS and SASL: app.infra.kafka_security
        datadir=str(settings.data_dir / "faust"),
        autodiscover=False,
        web_enabled=True,
        web="flagstream://",  # app.web.fast_path.FastPathWeb: aiohttp with the OFREP fast path
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        # Faust's built-in pages (/router, /table, /graph, stats) answer without auth: off.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_s,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.flag_change_partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=False,  # app.infra.topics.ensure_topics creates every topic, once
        topic_disable_leader=True,  # no leader election: it would need one more topic
        producer_acks=-1,
        Monitor=QuietMonitor,  # its 1 s sampler feeds only Faust's stats pages (off above)
        TableManager=PromptTableManager,  # no 1 s nap before the agents subscribe
    )


def build(settings: Settings, registry: CollectorRegistry = REGISTRY) -> Worker:
    """Every part of one worker, wired; nothing runs until the app is started."""
    metrics = Metrics(registry)
    metrics.worker.info({"worker_id": settings.worker_id, "app_id": settings.app_id})
    bound_fetch_wait(settings.fetch_max_wait_ms, settings.idle_poll_ms)
    refuse_topic_auto_creation()  # only ensure_topics makes our topics, at their declared size
    app = faust_app_for(settings)
    # First of all, started with the app: a broker outage must neither flood the log nor keep
    # a stopping worker alive, from the start on (a start that fails with the broker gone
    # stops the worker too, and that stop waits on the broker like any other).
    app.add_dependency(RepeatLimiter())
    app.add_dependency(ShutdownWatchdog(settings.shutdown_timeout_s))
    topics = Topics.of(settings)  # `<prefix>.<topic>`: deployments on one cluster stay apart

    flags = FlagTable(
        settings.data_dir / "flags",
        history_depth=settings.history_depth,
        stream_depth=settings.stream_depth,
        change_id_depth=settings.change_id_depth,
    )
    replication = FlagReplication(settings, flags, metrics)
    broker_watch = BrokerWatch(settings, replication, metrics)
    outcomes = Outcomes(flags)
    replication.on_applied(outcomes.heard_applied)
    dead_letters = DeadLetterReader(settings, outcomes, metrics.consumer_lag)
    broker_watch.before_writes(dead_letters.move_to_end)
    writer = Writer(app, outcomes, broker_watch.writable, settings)
    # Compiled in the background once the table caught up: ready never waits for compiling.
    # A version no decider validated (written straight to the changelog) is never served: its
    # flag keeps its last valid version and the record is counted as invalid.
    invalid_records = metrics.changelog_records.labels("invalid")
    live_flags = LiveFlags(
        flags,
        compile_after=replication.ready,
        on_invalid=lambda _change, _problems: invalid_records.inc(),
    )
    replication.on_rebuild(live_flags.forget)
    # One batching producer for exposures and metric events, each with its own buffer.
    exposures = exposure_channel(settings, metrics)
    metric_events = metric_event_channel(settings, metrics)
    record_sink = RecordSink(settings, (exposures, metric_events))
    stats = EvaluationStats()
    registry.register(stats)
    evaluator = Evaluator(live_flags, exposures, stats)

    async def send_dead_letter(letter: bytes) -> None:
        await app.producer.send_and_wait(topics.dead_letters, None, letter, 0, None, None)

    # Every worker tails `experiment-stats` (all partitions): the results views and the
    # guardrails read the partials merged.
    stats_dead_letters = DeadLetterSender(topics.experiment_stats, send_dead_letter, metrics)
    stats_feed = ExperimentStatsFeed(settings, metrics, stats_dead_letters.park)
    replication.on_rebuild(stats_feed.forget)  # partials of a log the broker lost
    # Every worker watches every experiment's guardrails; the change id applies a rollback once.
    guardrails = GuardrailWatch(settings, metrics, live_flags, writer, stats_feed)

    # The table's catch-up starts with the app, before Faust's consumer joins its group (a
    # join waits out the broker's rebalance delay: seconds, spent idle): the flags are read
    # in that wait. Ready still waits for the writes to open (`BrokerWatch`, a service below).
    app.add_dependency(replication)
    # Faust starts extra services with the app and accepts an instance as well as a class.
    for service in (
        broker_watch,
        dead_letters,
        record_sink,
        stats_feed,
        guardrails,
        EvaluationRequests(settings, flags, replication, evaluator, metrics),
        MetricsSite(settings.metrics_host, settings.metrics_port),
    ):
        app.service(service)  # type: ignore[arg-type]  # faust annotates a class only
    if settings.experiments:
        app.service(ExperimentAttribution(settings, replication, live_flags, metrics))  # type: ignore[arg-type]
    FlagChangeAgent(app, settings, flags, replication, broker_watch, metrics).attach()

    credentials = Credentials(settings)
    feed = ChangeFeed(metrics)
    flags.listen_batches(feed.publish_all)  # one call per table write, not per change
    change_stream = ChangeStreamApi(settings, credentials, flags, replication, feed, metrics)
    # The experiment results streams count against the same worker-wide and per-token caps.
    experiments_api = ExperimentsApi(
        settings, credentials, live_flags, stats_feed, replication, slots=change_stream.slots
    )
    flags.listen_batches(experiments_api.heard_changes)  # a flag turned off: results redraw
    registry.register(ExperimentHealth(stats_feed, experiments_api.design))
    ofrep = OfrepApi(
        settings, credentials, flags, live_flags, replication, evaluator, feed, metrics
    )
    web = app.web
    if not isinstance(web, FastPathWeb):
        raise TypeError(f'web="flagstream://" must pick FastPathWeb, not {type(web)}')
    web_app = web.web_app
    for api in (
        AdminApi(settings, credentials, flags, writer),
        EvaluateApi(settings, credentials, flags, live_flags, replication),
        ExposuresApi(settings, credentials, live_flags, replication, exposures, metrics),
        MetricEventsApi(settings, credentials, live_flags, replication, metric_events, metrics),
        change_stream,
        HealthApi(flags, replication, broker_watch),
        ofrep,
        OfrepEvents(credentials, flags, feed),
        experiments_api,
        DashboardUi(),
    ):
        web_app.add_routes(api.routes())
    web_app.on_shutdown.append(feed.close_streams)
    # Every answer of the HTTP API is counted, whatever its view returned or raised.
    web_app.middlewares.append(response_counter(metrics))
    web.count_with(metrics)
    if settings.ofrep_fast_path:
        web.answer_first(
            ofrep.evaluate_at_once,
            settings.max_body_bytes,
            ofrep.admits,
            ofrep.evaluate_flags_at_once,
        )

    return Worker(
        settings, app, flags, replication, broker_watch, live_flags, evaluator, exposures, writer
    )
