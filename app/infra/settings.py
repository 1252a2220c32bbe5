"""Settings read once from the environment.

Every knob a deployment needs is an environment variable (docker-compose sets them), so the
same image runs as a laptop worker on the embedded broker or as a replica beside real Kafka.
The README's settings table is generated from `SETTINGS` below; keep the two in one place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from app.infra.changelog_signing import ChangelogSigner
from app.infra.kafka_security import KafkaSecurity

__all__ = ["SETTINGS", "Setting", "Settings", "changelog_signer", "secret"]


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable: its name, default and what it means (for the README)."""

    env: str
    default: str
    meaning: str


SETTINGS: tuple[Setting, ...] = (
    Setting("FLAGSTREAM_BROKERS", "127.0.0.1:9092", "Kafka bootstrap servers, comma separated."),
    Setting(
        "FLAGSTREAM_KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        "How every Kafka client connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
        " (app/infra/kafka_security.py).",
    ),
    Setting(
        "FLAGSTREAM_KAFKA_SASL_MECHANISM",
        "",
        "With SASL_*: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (a static token).",
    ),
    Setting("FLAGSTREAM_KAFKA_SASL_USERNAME", "", "SASL user name (PLAIN, SCRAM)."),
    Setting(
        "FLAGSTREAM_KAFKA_SASL_PASSWORD",
        "",
        "SASL password, or the OAUTHBEARER token; or from a file: `…_PASSWORD_FILE`.",
    ),
    Setting(
        "FLAGSTREAM_KAFKA_SSL_CAFILE",
        "",
        "PEM CA bundle the broker certificates are checked against (empty: the system's).",
    ),
    Setting(
        "FLAGSTREAM_KAFKA_SSL_CERTFILE",
        "",
        "PEM client certificate for TLS client authentication (mTLS, e.g. Strimzi).",
    ),
    Setting(
        "FLAGSTREAM_KAFKA_SSL_KEYFILE",
        "",
        "PEM private key of the client certificate (empty: it is in the certificate file).",
    ),
    Setting(
        "FLAGSTREAM_KAFKA_SSL_KEY_PASSWORD",
        "",
        "Password of an encrypted client key; or from a file: `…_KEY_PASSWORD_FILE`.",
    ),
    Setting(
        "FLAGSTREAM_KAFKA_SSL_CHECK_HOSTNAME",
        "true",
        "Check that a broker's certificate names the host connected to.",
    ),
    Setting(
        "FLAGSTREAM_APP_ID",
        "flagstream",
        "Names this deployment: its consumer groups (`<app id>`, `<app id>-evaluations`,"
        " `<app id>-experiments`) and, by default, its topic prefix.",
    ),
    Setting(
        "FLAGSTREAM_TOPIC_PREFIX",
        "",
        "Every topic is `<prefix>.<topic>` (`flagstream.flag-changes`), so deployments sharing"
        " a cluster stay apart (empty: the app id; docs/topics.md).",
    ),
    Setting(
        "FLAGSTREAM_WORKER_ID", "", "Name of this worker in logs and metrics (default: host:port)."
    ),
    Setting("FLAGSTREAM_DATA_DIR", "./data", "Where this worker keeps its RocksDB tables."),
    Setting(
        "FLAGSTREAM_PROCESSES",
        "0",
        "Worker processes of `flagstream worker` sharing the HTTP port, each a full replica"
        " (0: one per core); `--processes` overrides it (app/cli/processes.py).",
    ),
    Setting("FLAGSTREAM_WEB_HOST", "127.0.0.1", "Address the HTTP API listens on."),
    Setting("FLAGSTREAM_WEB_PORT", "6066", "Port the HTTP API listens on."),
    Setting(
        "FLAGSTREAM_METRICS_HOST",
        "127.0.0.1",
        "Address Prometheus metrics (`/metrics`) are served on; the loopback keeps them private.",
    ),
    Setting(
        "FLAGSTREAM_METRICS_PORT",
        "9464",
        "Port of `/metrics`, apart from the API: it names every evaluated flag and variant.",
    ),
    Setting(
        "FLAGSTREAM_ADMIN_TOKEN",
        "",
        "Bearer token for writes (empty: a random one is made and printed by `up`).",
    ),
    Setting(
        "FLAGSTREAM_READ_TOKENS",
        "",
        "Comma-separated bearer tokens allowed to read flags (the admin token reads too).",
    ),
    Setting(
        "FLAGSTREAM_SDK_KEYS", "", "Comma-separated `key=environment` pairs for evaluation clients."
    ),
    Setting(
        "FLAGSTREAM_CHANGELOG_KEY",
        "",
        "Key (32+ bytes) the decider signs every changelog record with; workers apply only"
        " records it or an old key signed (empty: nothing signed or checked, a warning at start).",
    ),
    Setting(
        "FLAGSTREAM_CHANGELOG_OLD_KEYS",
        "",
        "Comma-separated former changelog keys: verify only, kept while the log holds their"
        " records (rotation).",
    ),
    Setting(
        "FLAGSTREAM_CHANGELOG_UNSIGNED",
        "false",
        "With a changelog key, also apply records without a signature (a log written before"
        " the key); forged ones are refused still.",
    ),
    Setting(
        "FLAGSTREAM_FLAG_CHANGE_PARTITIONS",
        "4",
        "Partitions of `flag-changes` and of the flag table changelog.",
    ),
    Setting("FLAGSTREAM_REPLICATION_FACTOR", "1", "Replication factor of every topic we create."),
    Setting(
        "FLAGSTREAM_FLAG_CHANGES_RETENTION_MS",
        "-1",
        "Retention of `flag-changes` (-1: forever; it is the audit log).",
    ),
    Setting(
        "FLAGSTREAM_DEAD_LETTERS_RETENTION_MS",
        "1209600000",
        "Retention of `dead-letters` (default 14 days).",
    ),
    Setting(
        "FLAGSTREAM_EVALUATION_PARTITIONS",
        "8",
        "Partitions of `evaluation-requests` and `evaluation-results`.",
    ),
    Setting(
        "FLAGSTREAM_EXPOSURE_PARTITIONS",
        "8",
        "Partitions of `exposures` and `metric-events` (both keyed by targeting key).",
    ),
    Setting(
        "FLAGSTREAM_EXPOSURES_RETENTION_MS",
        "604800000",
        "Retention of `exposures` and `metric-events` (default 7 days).",
    ),
    Setting(
        "FLAGSTREAM_EXPOSURE_BUFFER",
        "100000",
        "Exposures (and, apart, metric events) buffered per worker before new ones are dropped"
        " (and counted).",
    ),
    Setting(
        "FLAGSTREAM_EXPOSURE_FLUSH_MS",
        "50",
        "How often buffered exposures and metric events are produced.",
    ),
    Setting(
        "FLAGSTREAM_EXPERIMENTS",
        "true",
        "Fold exposures and metric events into experiment results in this worker (a consumer"
        " group: every worker takes a share of the partitions).",
    ),
    Setting(
        "FLAGSTREAM_ATTRIBUTION_WINDOW_S",
        "604800",
        "A metric event counts for a subject if it comes within this long after the subject's"
        " first exposure (default 7 days).",
    ),
    Setting(
        "FLAGSTREAM_SERIES_WINDOW_S",
        "60",
        "Width of the time windows of the exposures time series of results.",
    ),
    Setting(
        "FLAGSTREAM_SERIES_RETENTION_S",
        "86400",
        "How far back the exposures time series of results goes (default a day).",
    ),
    Setting(
        "FLAGSTREAM_ATTRIBUTION_FETCH_WAIT_MS",
        "200",
        "Longest wait of the attribution's Kafka fetches: longer gives it bigger batches (on the"
        " embedded broker, which never answers early, every fetch waits this long).",
    ),
    Setting(
        "FLAGSTREAM_STATS_PUBLISH_MS",
        "1000",
        "How often a worker publishes changed experiment totals to `experiment-stats`.",
    ),
    Setting(
        "FLAGSTREAM_SEQUENTIAL_TUNING",
        "5000",
        "Tuning of the always-valid interval: the total sample size where it is tightest"
        " (gbstats' sequential_tuning_parameter).",
    ),
    Setting(
        "FLAGSTREAM_GUARDRAILS",
        "true",
        "Roll an experiment back when a guardrail metric shows harm (docs/experiments.md).",
    ),
    Setting(
        "FLAGSTREAM_PRODUCER_IDEMPOTENCE",
        "true",
        "Idempotent Kafka producers (the embedded broker lacks them: `up` sets false).",
    ),
    Setting("FLAGSTREAM_HISTORY_DEPTH", "50", "Versions of each flag kept in the history table."),
    Setting(
        "FLAGSTREAM_STREAM_DEPTH",
        "1000",
        "Changes per environment kept for change-stream resumption.",
    ),
    Setting(
        "FLAGSTREAM_MAX_STREAMS",
        "1000",
        "Change streams (SSE) a worker serves at once; 503 above it.",
    ),
    Setting(
        "FLAGSTREAM_MAX_STREAMS_PER_KEY",
        "100",
        "Change streams one token may hold open on a worker; 429 above it.",
    ),
    Setting(
        "FLAGSTREAM_OFREP_FAST_PATH",
        "true",
        "Answer single-flag and bulk OFREP evaluations before aiohttp (app/web/fast_path.py).",
    ),
    Setting("FLAGSTREAM_MAX_BODY_BYTES", "262144", "Largest accepted request body (413 above it)."),
    Setting(
        "FLAGSTREAM_SHED_LOOP_LAG_MS",
        "50",
        "Event-loop lag past which OFREP requests are shed with 429 and Retry-After, a share"
        " growing to all at twice it (0: never shed; app/web/overload.py).",
    ),
    Setting(
        "FLAGSTREAM_EVALUATION_MAX_IN_FLIGHT",
        "5000",
        "Kafka evaluation results produced but not yet acknowledged, at most: at the bound the"
        " worker stops consuming `evaluation-requests` until acks arrive.",
    ),
    Setting(
        "FLAGSTREAM_CHANGE_ID_DEPTH",
        "100000",
        "Change ids (`Idempotency-Key`s) remembered per environment: a retry within the last "
        "N changes gets the first outcome, another request under a remembered id 422.",
    ),
    Setting(
        "FLAGSTREAM_WRITE_TIMEOUT_S",
        "10",
        "How long a write waits for its change to be applied or rejected.",
    ),
    Setting(
        "FLAGSTREAM_SHUTDOWN_TIMEOUT_S",
        "15",
        "Longest a worker takes to stop after SIGTERM/SIGINT; it exits then, stopped or not.",
    ),
    Setting(
        "FLAGSTREAM_REBALANCE_TIMEOUT_S",
        "60",
        "Consumer-group rebalance timeout; set to 3 on the embedded broker.",
    ),
    Setting("FLAGSTREAM_SESSION_TIMEOUT_S", "30", "Consumer-group session timeout."),
    Setting("FLAGSTREAM_HEARTBEAT_S", "3", "Consumer-group heartbeat interval."),
    Setting(
        "FLAGSTREAM_FETCH_MAX_WAIT_MS",
        "500",
        "Longest wait of a Kafka fetch while data flows; the embedded broker needs ~10 (it"
        " answers a waiting fetch only at half its wait, then three quarters, ...).",
    ),
    Setting(
        "FLAGSTREAM_IDLE_POLL_MS",
        "40",
        "While they find nothing, the consumers a flag change crosses (flag changes, changelog)"
        " fetch at most once per this long: their fetches wait this long at the broker (none"
        " longer than the fetch wait within a second of records; app/infra/fetch_wait.py),"
        " which answers when a record comes (Kafka at once, the embedded broker within about"
        " half of it): a change after silence waits up to ~half this at each of its two hops.",
    ),
    Setting(
        "FLAGSTREAM_BACKGROUND_POLL_MS",
        "250",
        "The same for the other consumers (Kafka evaluation requests, dead letters, experiment"
        " totals and state): the first evaluation request or rejected write after silence"
        " waits up to about half this long on the embedded broker (none on Kafka).",
    ),
    Setting(
        "FLAGSTREAM_EVENT_LOOP",
        "uvloop",
        "Event loop of a worker: `uvloop` or `asyncio` (app/infra/event_loop.py).",
    ),
    Setting(
        "FLAGSTREAM_LOG_LEVEL",
        "info",
        "Worker log level (info: Faust's default `warn` costs ~12% throughput).",
    ),
)


def _env(name: str) -> str:
    default = next(s.default for s in SETTINGS if s.env == name)
    return os.environ.get(name, default)


def _flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


# Secrets may come from a file (Docker and Kubernetes secrets): `<NAME>_FILE` holds its path.
SECRETS = (
    "FLAGSTREAM_ADMIN_TOKEN",
    "FLAGSTREAM_READ_TOKENS",
    "FLAGSTREAM_SDK_KEYS",
    "FLAGSTREAM_KAFKA_SASL_PASSWORD",
    "FLAGSTREAM_KAFKA_SSL_KEY_PASSWORD",
    "FLAGSTREAM_CHANGELOG_KEY",
    "FLAGSTREAM_CHANGELOG_OLD_KEYS",
)


def _secret(name: str) -> str:
    """`name`, or the content of the file `name`_FILE names (one trailing newline dropped).

    Errors name the variables and the path, never the content."""
    path = os.environ.get(f"{name}_FILE", "")
    if not path:
        return _env(name)
    if os.environ.get(name):
        raise ValueError(f"set {name} or {name}_FILE, not both")
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"{name}_FILE: cannot read {path}: {reason}") from None


def secret(name: str) -> str:
    """A secret setting read as the worker reads it (`name`, or the file `name`_FILE names),
    for the commands that read one without the whole `Settings` (`flagstream flags`, `up`):
    so a secret given as a file works for every command, not only the worker."""
    return _secret(name)


@dataclass(frozen=True, slots=True)
class Settings:
    """The typed view of `SETTINGS`; build it with `Settings.from_env()`."""

    brokers: tuple[str, ...]
    kafka_security_protocol: str
    kafka_sasl_mechanism: str
    kafka_sasl_username: str
    kafka_sasl_password: str = field(repr=False)
    kafka_ssl_cafile: str
    kafka_ssl_certfile: str
    kafka_ssl_keyfile: str
    kafka_ssl_key_password: str = field(repr=False)
    kafka_ssl_check_hostname: bool
    app_id: str
    topic_prefix: str
    worker_id: str
    data_dir: Path
    processes: int
    web_host: str
    web_port: int
    metrics_host: str
    metrics_port: int
    # Secrets stay out of repr: a settings object in a log line or a traceback shows none.
    admin_token: str = field(repr=False)
    read_tokens: tuple[str, ...] = field(repr=False)
    sdk_keys: dict[str, str] = field(repr=False)
    changelog_key: str = field(repr=False)
    changelog_old_keys: tuple[str, ...] = field(repr=False)
    changelog_unsigned: bool
    flag_change_partitions: int
    replication_factor: int
    flag_changes_retention_ms: int
    dead_letters_retention_ms: int
    evaluation_partitions: int
    exposure_partitions: int
    exposures_retention_ms: int
    exposure_buffer: int
    exposure_flush_ms: int
    experiments: bool
    attribution_window_s: float
    series_window_s: int
    series_retention_s: int
    attribution_fetch_wait_ms: int
    stats_publish_ms: int
    sequential_tuning: float
    guardrails: bool
    producer_idempotence: bool
    history_depth: int
    stream_depth: int
    max_streams: int
    max_streams_per_key: int
    change_id_depth: int
    ofrep_fast_path: bool
    max_body_bytes: int
    shed_loop_lag_ms: int
    evaluation_max_in_flight: int
    write_timeout_s: float
    shutdown_timeout_s: float
    rebalance_timeout_s: float
    session_timeout_s: float
    heartbeat_s: float
    fetch_max_wait_ms: int
    idle_poll_ms: int
    background_poll_ms: int
    event_loop: str
    log_level: str

    @classmethod
    def from_env(cls) -> Settings:
        web_host = _env("FLAGSTREAM_WEB_HOST")
        web_port = int(_env("FLAGSTREAM_WEB_PORT"))
        sdk_keys = dict(
            pair.split("=", 1) for pair in _csv(_secret("FLAGSTREAM_SDK_KEYS")) if "=" in pair
        )
        settings = cls(
            brokers=_csv(_env("FLAGSTREAM_BROKERS")),
            kafka_security_protocol=_env("FLAGSTREAM_KAFKA_SECURITY_PROTOCOL"),
            kafka_sasl_mechanism=_env("FLAGSTREAM_KAFKA_SASL_MECHANISM"),
            kafka_sasl_username=_env("FLAGSTREAM_KAFKA_SASL_USERNAME"),
            kafka_sasl_password=_secret("FLAGSTREAM_KAFKA_SASL_PASSWORD"),
            kafka_ssl_cafile=_env("FLAGSTREAM_KAFKA_SSL_CAFILE"),
            kafka_ssl_certfile=_env("FLAGSTREAM_KAFKA_SSL_CERTFILE"),
            kafka_ssl_keyfile=_env("FLAGSTREAM_KAFKA_SSL_KEYFILE"),
            kafka_ssl_key_password=_secret("FLAGSTREAM_KAFKA_SSL_KEY_PASSWORD"),
            kafka_ssl_check_hostname=_flag(_env("FLAGSTREAM_KAFKA_SSL_CHECK_HOSTNAME")),
            app_id=_env("FLAGSTREAM_APP_ID"),
            topic_prefix=_env("FLAGSTREAM_TOPIC_PREFIX") or _env("FLAGSTREAM_APP_ID"),
            worker_id=_env("FLAGSTREAM_WORKER_ID") or f"{web_host}:{web_port}",
            data_dir=Path(_env("FLAGSTREAM_DATA_DIR")),
            processes=int(_env("FLAGSTREAM_PROCESSES")),
            web_host=web_host,
            web_port=web_port,
            metrics_host=_env("FLAGSTREAM_METRICS_HOST"),
            metrics_port=int(_env("FLAGSTREAM_METRICS_PORT")),
            admin_token=_secret("FLAGSTREAM_ADMIN_TOKEN"),
            read_tokens=_csv(_secret("FLAGSTREAM_READ_TOKENS")),
            sdk_keys=sdk_keys,
            changelog_key=_secret("FLAGSTREAM_CHANGELOG_KEY"),
            changelog_old_keys=_csv(_secret("FLAGSTREAM_CHANGELOG_OLD_KEYS")),
            changelog_unsigned=_flag(_env("FLAGSTREAM_CHANGELOG_UNSIGNED")),
            flag_change_partitions=int(_env("FLAGSTREAM_FLAG_CHANGE_PARTITIONS")),
            replication_factor=int(_env("FLAGSTREAM_REPLICATION_FACTOR")),
            flag_changes_retention_ms=int(_env("FLAGSTREAM_FLAG_CHANGES_RETENTION_MS")),
            dead_letters_retention_ms=int(_env("FLAGSTREAM_DEAD_LETTERS_RETENTION_MS")),
            evaluation_partitions=int(_env("FLAGSTREAM_EVALUATION_PARTITIONS")),
            exposure_partitions=int(_env("FLAGSTREAM_EXPOSURE_PARTITIONS")),
            exposures_retention_ms=int(_env("FLAGSTREAM_EXPOSURES_RETENTION_MS")),
            exposure_buffer=int(_env("FLAGSTREAM_EXPOSURE_BUFFER")),
            exposure_flush_ms=int(_env("FLAGSTREAM_EXPOSURE_FLUSH_MS")),
            experiments=_flag(_env("FLAGSTREAM_EXPERIMENTS")),
            attribution_window_s=float(_env("FLAGSTREAM_ATTRIBUTION_WINDOW_S")),
            series_window_s=int(_env("FLAGSTREAM_SERIES_WINDOW_S")),
            series_retention_s=int(_env("FLAGSTREAM_SERIES_RETENTION_S")),
            attribution_fetch_wait_ms=int(_env("FLAGSTREAM_ATTRIBUTION_FETCH_WAIT_MS")),
            stats_publish_ms=int(_env("FLAGSTREAM_STATS_PUBLISH_MS")),
            sequential_tuning=float(_env("FLAGSTREAM_SEQUENTIAL_TUNING")),
            guardrails=_flag(_env("FLAGSTREAM_GUARDRAILS")),
            producer_idempotence=_flag(_env("FLAGSTREAM_PRODUCER_IDEMPOTENCE")),
            history_depth=int(_env("FLAGSTREAM_HISTORY_DEPTH")),
            stream_depth=int(_env("FLAGSTREAM_STREAM_DEPTH")),
            max_streams=int(_env("FLAGSTREAM_MAX_STREAMS")),
            max_streams_per_key=int(_env("FLAGSTREAM_MAX_STREAMS_PER_KEY")),
            change_id_depth=int(_env("FLAGSTREAM_CHANGE_ID_DEPTH")),
            ofrep_fast_path=_flag(_env("FLAGSTREAM_OFREP_FAST_PATH")),
            max_body_bytes=int(_env("FLAGSTREAM_MAX_BODY_BYTES")),
            shed_loop_lag_ms=int(_env("FLAGSTREAM_SHED_LOOP_LAG_MS")),
            evaluation_max_in_flight=int(_env("FLAGSTREAM_EVALUATION_MAX_IN_FLIGHT")),
            write_timeout_s=float(_env("FLAGSTREAM_WRITE_TIMEOUT_S")),
            shutdown_timeout_s=float(_env("FLAGSTREAM_SHUTDOWN_TIMEOUT_S")),
            rebalance_timeout_s=float(_env("FLAGSTREAM_REBALANCE_TIMEOUT_S")),
            session_timeout_s=float(_env("FLAGSTREAM_SESSION_TIMEOUT_S")),
            heartbeat_s=float(_env("FLAGSTREAM_HEARTBEAT_S")),
            fetch_max_wait_ms=int(_env("FLAGSTREAM_FETCH_MAX_WAIT_MS")),
            idle_poll_ms=int(_env("FLAGSTREAM_IDLE_POLL_MS")),
            background_poll_ms=int(_env("FLAGSTREAM_BACKGROUND_POLL_MS")),
            event_loop=_env("FLAGSTREAM_EVENT_LOOP"),
            log_level=_env("FLAGSTREAM_LOG_LEVEL"),
        )
        KafkaSecurity.from_settings(settings)  # a bad combination fails here, at start
        changelog_signer(settings)  # a short key too
        return settings

    @property
    def bootstrap(self) -> str:
        return ",".join(self.brokers)


def changelog_signer(settings: Settings) -> ChangelogSigner:
    """The changelog's signer and verifier of these settings (app.infra.changelog_signing)."""
    return ChangelogSigner.of(
        settings.changelog_key,
        settings.changelog_old_keys,
        accept_unsigned=settings.changelog_unsigned,
    )
