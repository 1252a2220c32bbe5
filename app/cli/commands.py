"""`flagstream`: its arguments, and the commands that run the service (`worker`, `broker`).

`up` (the newcomer's one command) lives in `app.cli.supervisor`; `flags` and `restore` (the
admin API from the command line) in `app.cli.flags`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.cli.flags import RESTORE_JOBS, run_flags, run_restore
from app.cli.supervisor import run_up
from app.control.client import AdminError
from app.control.flagfile import FlagFileError

if TYPE_CHECKING:
    from app.infra.settings import Settings

__all__ = ["main"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flags.json"


def default_url() -> str:
    return os.environ.get("FLAGSTREAM_URL") or "http://{}:{}".format(
        os.environ.get("FLAGSTREAM_WEB_HOST", "127.0.0.1"),
        os.environ.get("FLAGSTREAM_WEB_PORT", "6066"),
    )


# -- running the service -------------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> int:
    """Create the topics, then run the worker until it is stopped: in this process, or as
    `--processes` children sharing the HTTP port (`app.cli.processes`)."""
    from aiokafka.errors import KafkaConnectionError

    from app.cli.processes import process_count, run_processes
    from app.infra.settings import Settings
    from app.infra.topics import TopicMismatchError, ensure_topics

    settings = Settings.from_env()
    count = process_count(settings.processes if args.processes is None else args.processes)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Once here rather than in each child: N children creating the same topics would race.
    # The first contact with Kafka: a broker it cannot reach (down, wrong CA, refused
    # credentials) is told in one line and exit code 1, not a traceback.
    try:
        with UnreachableBroker(settings) as unreachable:
            asyncio.run(ensure_topics(settings))
    except TopicMismatchError as exc:  # topics this deployment cannot run on: say which, stop
        print(f"flagstream: {exc}", file=sys.stderr, flush=True)
        return 2
    except KafkaConnectionError:
        print(f"flagstream: {unreachable.reason()}", file=sys.stderr, flush=True)
        return 1
    if count > 1:
        print(
            f"flagstream: {count} worker processes on {settings.web_host}:{settings.web_port}",
            file=sys.stderr,
            flush=True,
        )
        return run_processes(settings, count)
    return run_in_process(settings)


class UnreachableBroker(logging.Filter):
    """While in its block, holds back aiokafka's "Unable connect" errors and keeps their cause.

    aiokafka logs why a bootstrap connection failed ("certificate verify failed", "Connect call
    failed") and then raises a KafkaConnectionError that says only "Unable to bootstrap": the
    cause is read from the held records. A block that ends otherwise logs them after all (a
    bootstrap server that failed while another answered is still worth a line).
    """

    LOGGER = "aiokafka"  # aiokafka.client logs under the package name

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.brokers = settings.bootstrap
        passwords = (settings.kafka_sasl_password, settings.kafka_ssl_key_password)
        self.secrets = [password for password in passwords if password]
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Unable connect") and isinstance(record.args, tuple):
            self.held.append(record)
            return False
        return True

    def __enter__(self) -> UnreachableBroker:
        logging.getLogger(self.LOGGER).addFilter(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        from aiokafka.errors import KafkaConnectionError

        logger = logging.getLogger(self.LOGGER)
        logger.removeFilter(self)
        if kind is None or not issubclass(kind, KafkaConnectionError):  # else: reason() says it
            for record in self.held:
                logger.handle(record)

    def reason(self) -> str:
        """One line: which brokers, and the last connection's cause (never a secret)."""
        causes = [r.args[-1] for r in self.held if isinstance(r.args, tuple) and r.args]
        cause = "no answer"
        if causes:  # a timeout's message is empty: its type says it
            cause = str(causes[-1]) or type(causes[-1]).__name__
        for secret in self.secrets:  # a password in an error message would be a bug elsewhere
            cause = cause.replace(secret, "***")
        return f"cannot reach Kafka at {self.brokers}: {cause}"


def run_in_process(settings: Settings) -> int:
    """The Faust worker in this process, until it is stopped."""
    from app.infra.event_loop import use_event_loop
    from app.main import build

    use_event_loop(settings.event_loop)  # before build: Faust makes its loops from the policy
    worker = build(settings)
    sys.argv = ["flagstream", "worker", "-l", settings.log_level]
    worker.app.main()
    return 0


def run_broker(args: argparse.Namespace) -> int:
    from app.infra.broker import broker_command

    command = broker_command(args.host, args.port)
    os.execv(command[0], command)  # noqa: S606 (our own broker binary and its options, no shell)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="flagstream", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="embedded broker + one worker + the example flags")
    up.add_argument("--port", type=int, default=6066, help="HTTP port (a free one if taken)")
    up.add_argument(
        "--kafka-port", type=int, default=9092, help="broker port (a free one if taken)"
    )
    up.add_argument(
        "--metrics-port", type=int, default=9464, help="metrics port (a free one if taken)"
    )
    up.add_argument(
        "-f", "--file", default=str(EXAMPLES), help="flagd file loaded into `development`"
    )
    up.add_argument("--log", default="flagstream-up.log", help="where the worker logs")
    up.add_argument(
        "--processes",
        type=int,
        default=int(os.environ.get("FLAGSTREAM_PROCESSES", "0")),
        help="worker processes sharing the HTTP port (default: FLAGSTREAM_PROCESSES, else one"
        " per core)",
    )
    up.add_argument(
        "--data-dir",
        default=os.path.join("data", "up"),
        help="keys, flags and history kept across runs (default: data/up)",
    )
    up.set_defaults(run=run_up)

    restore_ = commands.add_parser(
        "restore", help="re-seed an empty cluster from a stopped worker's flag table"
    )
    restore_.add_argument(
        "--from",
        dest="source",
        required=True,
        help="the worker's data dir (its FLAGSTREAM_DATA_DIR); the worker must be stopped",
    )
    restore_.add_argument(
        "--env", action="append", default=None, help="only this environment (repeatable)"
    )
    restore_.add_argument(
        "--force",
        action="store_true",
        help="also into environments that already have changes (after them)",
    )
    restore_.add_argument(
        "--jobs",
        type=int,
        default=RESTORE_JOBS,
        help="flags written at once; 1 also keeps each environment's order of changes",
    )
    restore_.add_argument("--url", default=default_url(), help="API base URL (FLAGSTREAM_URL)")
    restore_.add_argument("--token", default=None, help="admin token (FLAGSTREAM_ADMIN_TOKEN)")
    restore_.set_defaults(run=run_restore)

    worker = commands.add_parser("worker", help="a worker against FLAGSTREAM_BROKERS")
    worker.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes sharing the HTTP port, each a full replica; 0: one per core"
        " (default: FLAGSTREAM_PROCESSES, 1)",
    )
    worker.set_defaults(run=run_worker)

    broker = commands.add_parser("broker", help="the embedded broker alone")
    broker.add_argument("--host", default="127.0.0.1")
    broker.add_argument("--port", type=int, default=9092)
    broker.set_defaults(run=run_broker)

    flags = commands.add_parser("flags", help="manage flags through the admin API")
    flags.set_defaults(run=run_flags)
    actions = flags.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text)
        sub.add_argument("--env", required=True, help="environment")
        sub.add_argument("--url", default=default_url(), help="API base URL (FLAGSTREAM_URL)")
        sub.add_argument("--token", default=None, help="admin token (FLAGSTREAM_ADMIN_TOKEN)")
        return sub

    apply = action("apply", "make an environment's flags equal to a flagd file (idempotent)")
    apply.add_argument("-f", "--file", required=True)
    apply.add_argument("--prune", action="store_true", help="delete flags missing from the file")
    apply.add_argument("--dry-run", action="store_true", help="print the changes, make none")
    export = action("export", "write the environment's flags as a flagd file")
    export.add_argument("-o", "--output", default=None)
    action("list", "one line per flag")
    for name, text in (
        ("get", "one flag"),
        ("history", "a flag's versions"),
        ("on", "enable a flag"),
        ("off", "disable a flag (kill switch)"),
    ):
        action(name, text).add_argument("key")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result: Any = args.run(args)
        return int(result or 0)
    except (AdminError, FlagFileError, OSError, ValueError) as exc:
        print(f"flagstream: {exc}", file=sys.stderr)
        return 2
