"""`flagstream`: run the service (`up`, `worker`, `broker`), manage flags (`flags ...`) and
re-seed a cluster that lost its data (`restore`).

`up` is the newcomer's one command: the embedded broker, one worker, the example flags, and
the URLs and keys to try them, stopped cleanly by Ctrl-C. Its data dir keeps the flags and the
keys, so the next `up` starts where this one stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from app.cli import up_state
from app.control.client import AdminClient, AdminError
from app.control.flagfile import FlagFileError, flags_of
from app.control.flagfile import plan as plan_apply
from app.control.restore import RestoreError, plan, read_table, restore, totals

__all__ = ["main", "wait_ready"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flags.json"
RESTORE_JOBS = 8  # flags restored at once (each flag's versions in order): ~2x one at a time


def default_url() -> str:
    return os.environ.get("FLAGSTREAM_URL") or "http://{}:{}".format(
        os.environ.get("FLAGSTREAM_WEB_HOST", "127.0.0.1"),
        os.environ.get("FLAGSTREAM_WEB_PORT", "6066"),
    )


# -- running the service -------------------------------------------------------------------


def run_worker(_: argparse.Namespace) -> int:
    """Create the topics, then run the Faust worker in this process until it is stopped."""
    from app.infra.log_limit import RepeatLimiter
    from app.infra.settings import Settings
    from app.infra.shutdown import ShutdownWatchdog
    from app.infra.topics import ensure_topics
    from app.main import build

    settings = Settings.from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(ensure_topics(settings))
    worker = build(settings)
    # A broker outage must neither flood the log nor keep a stopping worker alive.
    # faust annotates `service` for a class only; it starts an instance just as well.
    worker.app.service(RepeatLimiter())  # type: ignore[arg-type]
    worker.app.service(ShutdownWatchdog(settings.shutdown_timeout_s))  # type: ignore[arg-type]
    sys.argv = ["flagstream", "worker", "-l", settings.log_level]
    worker.app.main()
    return 0


def run_broker(args: argparse.Namespace) -> int:
    from app.infra.broker import broker_command

    command = broker_command(args.host, args.port)
    os.execv(command[0], command)  # noqa: S606 (our own broker binary and its options, no shell)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with code {process.returncode}")
        try:
            # S310: `url` is the http:// address of the worker this command started.
            with urllib.request.urlopen(url + "/readyz", timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the worker was not ready within {timeout_s:.0f}s")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_up(args: argparse.Namespace) -> int:
    """Broker + one worker + the flags of the last run (else the examples); Ctrl-C stops both.

    The data dir keeps the admin token, the SDK key and the worker's table across runs; the
    table of the last run is restored into the fresh (empty) broker before anything else.
    """
    from app.infra.broker import free_port, port_open, start_broker, stop

    host = "127.0.0.1"
    kafka_port = args.kafka_port if not port_open(host, args.kafka_port) else free_port()
    web_port = args.port if not port_open(host, args.port) else free_port()
    metrics_port = args.metrics_port if not port_open(host, args.metrics_port) else free_port()
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    keys = up_state.load_keys(data_dir)
    admin_token = os.environ.get("FLAGSTREAM_ADMIN_TOKEN") or keys.admin_token
    sdk_key = keys.sdk_key
    # Before the worker starts: meeting an empty broker, it would wipe the last run's table.
    previous = up_state.hand_over(data_dir)
    env = {
        **os.environ,
        "FLAGSTREAM_BROKERS": f"{host}:{kafka_port}",
        "FLAGSTREAM_WEB_HOST": host,
        "FLAGSTREAM_WEB_PORT": str(web_port),
        "FLAGSTREAM_METRICS_HOST": host,
        "FLAGSTREAM_METRICS_PORT": str(metrics_port),
        "FLAGSTREAM_DATA_DIR": str(up_state.worker_dir(data_dir)),
        "FLAGSTREAM_ADMIN_TOKEN": admin_token,
        "FLAGSTREAM_SDK_KEYS": f"{sdk_key}=development",
        # Tansu holds a group's first join for its timeouts (about half the session timeout
        # was seen here): short ones make `up` answer in seconds instead of half a minute.
        "FLAGSTREAM_REBALANCE_TIMEOUT_S": os.environ.get("FLAGSTREAM_REBALANCE_TIMEOUT_S", "3"),
        "FLAGSTREAM_SESSION_TIMEOUT_S": os.environ.get("FLAGSTREAM_SESSION_TIMEOUT_S", "6"),
        "FLAGSTREAM_HEARTBEAT_S": os.environ.get("FLAGSTREAM_HEARTBEAT_S", "1"),
        "FLAGSTREAM_FETCH_MAX_WAIT_MS": os.environ.get("FLAGSTREAM_FETCH_MAX_WAIT_MS", "10"),
        "FLAGSTREAM_PRODUCER_IDEMPOTENCE": "false",
    }
    url = f"http://{host}:{web_port}"
    print(f"starting the embedded broker on {host}:{kafka_port} ...", flush=True)
    broker = start_broker(host, kafka_port, data_dir / "broker.log")
    worker: subprocess.Popen[bytes] | None = None
    # `kill` stops everything as Ctrl-C does; Ctrl-C too when started in the background of a
    # script (which starts it with SIGINT ignored, so Python would not turn it into one).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        log_path = Path(args.log).resolve()
        print(f"starting a worker (data: {data_dir}, log: {log_path}) ...", flush=True)
        with log_path.open("ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_ready(url, worker, timeout_s=120)
        client = AdminClient(url, admin_token, actor="flagstream-up")
        if previous is not None:
            restore_last_run(client, previous)
        if not client.environments().get("development"):
            apply_file(client, Path(args.file), "development", prune=False, dry_run=False)
        print(
            f"\nflagstream is up.\n"
            f"  flags:       {url}/api/v1/environments/development/flags\n"
            f"  changes:     {url}/api/v1/environments/development/stream (server-sent events)\n"
            f"  metrics:     http://{host}:{metrics_port}/metrics (Prometheus, loopback only)\n"
            f"  admin token: {admin_token}\n"
            f"  SDK key:     {sdk_key}  (environment development)\n"
            f"  try:         curl -H 'Authorization: Bearer {admin_token}' \\\n"
            f"                 {url}/api/v1/environments/development/flags\n"
            f"  or:          FLAGSTREAM_URL={url} FLAGSTREAM_ADMIN_TOKEN={admin_token} \\\n"
            f"                 .venv/bin/flagstream flags list --env development\n"
            f"  data:        {data_dir} (flags, history and keys survive a restart)\n"
            f"Ctrl-C stops everything.",
            flush=True,
        )
        while worker.poll() is None and broker.poll() is None:
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        if worker is not None:
            stop(worker, timeout_s=20)
        stop(broker)


def restore_last_run(client: AdminClient, previous: Path) -> None:
    """Write the last run's flags and history into this run's empty broker."""
    print(f"restoring the flags of the last run from {previous} ...", flush=True)
    with read_table(previous) as table:
        steps = plan(table)
    outcomes = restore(
        client, steps, jobs=RESTORE_JOBS, say=lambda line: print("  " + line, flush=True)
    )
    if any(outcome.refused for outcome in outcomes):
        raise RestoreError(
            f"some versions were refused (above). The last run's table stays in {previous}: "
            "the next `flagstream up` restores it again; remove that directory to start "
            "without it"
        )
    up_state.drop_previous(previous)


# -- managing flags ------------------------------------------------------------------------


def apply_file(client: AdminClient, path: Path, env: str, *, prune: bool, dry_run: bool) -> int:
    """Make the environment's flags equal to the file's; print and return the changes made."""
    desired = flags_of(json.loads(path.read_text()))
    versions = {row["flag"]: row["version"] for row in client.summary(env)}
    current = client.flags(env)
    created, updated, deleted = plan_apply(desired, current, prune)
    for key in created:
        if not dry_run:
            client.put(env, key, desired[key])
        print(f"created {env}/{key}")
    for key in updated:
        if not dry_run:
            client.put(env, key, desired[key], versions[key])
        print(f"updated {env}/{key}")
    for key in deleted:
        if not dry_run:
            client.delete(env, key, versions[key])
        print(f"deleted {env}/{key}")
    unchanged = len(desired) - len(created) - len(updated)
    print(
        f"{len(created)} created, {len(updated)} updated, {len(deleted)} deleted, "
        f"{unchanged} unchanged"
    )
    return len(created) + len(updated) + len(deleted)


def run_flags(args: argparse.Namespace) -> int:
    client = AdminClient(args.url, args.token or os.environ.get("FLAGSTREAM_ADMIN_TOKEN", ""))
    env: str = args.env
    if args.action == "apply":
        apply_file(client, Path(args.file), env, prune=args.prune, dry_run=args.dry_run)
    elif args.action == "export":
        text = json.dumps({"flags": client.flags(env)}, indent=2, sort_keys=True) + "\n"
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)
    elif args.action == "list":
        for row in client.summary(env):
            print(f"{row['flag']:<32} {row['state'] or '':<9} v{row['version']:<5} {row['actor']}")
    elif args.action == "get":
        reply = client.flag(env, args.key)
        if reply.status >= 400:
            raise AdminError(reply)
        print(f"# {env}/{args.key} version {reply.headers.get('X-Flag-Version')}")
        print(json.dumps(reply.body, indent=2))
    elif args.action == "history":
        for version in client.history(env, args.key):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(version["updated_at"]))
            print(
                f"v{version['version']:<5} {version['op']:<7} {stamp} "
                f"{version['actor']} {version['change_id']}"
            )
    elif args.action in ("on", "off"):
        result = client.set_state(env, args.key, "ENABLED" if args.action == "on" else "DISABLED")
        print(f"{env}/{args.key} is {result['definition']['state']} (version {result['version']})")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    """Restore a stopped worker's table through the admin API; 1 when versions were refused."""
    client = AdminClient(args.url, args.token or os.environ.get("FLAGSTREAM_ADMIN_TOKEN", ""))
    with read_table(Path(args.source)) as table:
        steps = plan(table, args.env)
    outcomes = restore(client, steps, force=args.force, jobs=args.jobs)
    print(f"restored from {Path(args.source).resolve()}: {totals(outcomes)}")
    return 1 if any(outcome.refused for outcome in outcomes) else 0


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

    commands.add_parser("worker", help="a worker against FLAGSTREAM_BROKERS").set_defaults(
        run=run_worker
    )

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
