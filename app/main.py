"""The Faust application: one worker process of flagstream.

Built from the environment (`app.infra.settings`), it holds the flag table (`tables.flags`) kept
current by `tables.replication`, runs the agents in `agents/` and serves the HTTP API in
`app/web/`. `flagstream worker` (see `app.cli.commands`) starts it.
"""

from __future__ import annotations

import faust
from prometheus_client import REGISTRY

from app.control.dead_letters import DeadLetterReader
from app.control.outcomes import Outcomes
from app.control.writer import Writer
from app.evaluation.evaluator import Evaluator
from app.evaluation.live_flags import LiveFlags
from app.evaluation.stats import EvaluationStats
from app.experiments.exposures import ExposureSink
from app.infra import metrics
from app.infra.fetch_wait import bound_fetch_wait
from app.infra.settings import Settings
from app.infra.topics import FLAG_CHANGES
from app.web.http_metrics import count_responses
from tables.broker_watch import BrokerWatch
from tables.flags import FlagTable
from tables.replication import FlagReplication

settings = Settings.from_env()
metrics.WORKER.info({"worker_id": settings.worker_id, "app_id": settings.app_id})
bound_fetch_wait(settings.fetch_max_wait_ms)

faust_app = faust.App(
    settings.app_id,
    broker=[f"kafka://{host}" for host in settings.brokers],
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
)

# The one topic a Faust agent reads (app.infra.topics names and sizes every topic): raw bytes, so
# the agent decodes at the edge and bad input becomes a dead letter, not a crash loop.
flag_changes_topic = faust_app.topic(
    FLAG_CHANGES,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.flag_change_partitions,
)

flag_table = FlagTable(
    settings.data_dir / "flags",
    history_depth=settings.history_depth,
    stream_depth=settings.stream_depth,
    change_id_depth=settings.change_id_depth,
)
replication = FlagReplication(settings, flag_table)
broker_watch = BrokerWatch(settings, replication)
outcomes = Outcomes(flag_table)
replication.on_applied(outcomes.heard_applied)
dead_letters = DeadLetterReader(settings, outcomes)
broker_watch.before_writes(dead_letters.move_to_end)
writer = Writer(faust_app, outcomes, broker_watch.writable, settings)
live_flags = LiveFlags(flag_table)
replication.on_rebuild(live_flags.forget)
exposure_sink = ExposureSink(settings)
evaluation_stats = EvaluationStats()
REGISTRY.register(evaluation_stats)
evaluator = Evaluator(live_flags, exposure_sink, evaluation_stats)


# Faust starts extra services with the app and accepts an instance as well as a class.
faust_app.service(replication)  # type: ignore[arg-type]
faust_app.service(broker_watch)  # type: ignore[arg-type]
faust_app.service(dead_letters)  # type: ignore[arg-type]
faust_app.service(exposure_sink)  # type: ignore[arg-type]

# Every answer of the HTTP API is counted, whatever its view returned or raised.
faust_app.web.web_app.middlewares.append(count_responses)

# Registration: importing these modules declares the agents and views on `faust_app`.
from agents import evaluations, flag_changes  # noqa: E402, F401
from app.web import admin, evaluate, exposures, ofrep, ops, stream  # noqa: E402, F401
