"""`flagstream up`: the embedded broker and a worker as child processes, for a newcomer.

The one command to try flagstream: the broker, a worker (one process per core, sharing the
HTTP port: `app.cli.processes`), the example flags (or the flags of the
last run, restored into the fresh broker), and the URLs and keys to use them, stopped cleanly by
Ctrl-C. The data dir keeps the flags and the keys, so the next `up` starts where this one
stopped (`app.cli.up_state`).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from app.cli import up_state
from app.cli.flags import RESTORE_JOBS, apply_file
from app.control.client import AdminClient
from app.control.restore import RestoreError, plan, read_table, restore

__all__ = ["SECRET_FILES", "inherited_environment", "run_up", "wait_ready", "worker_secrets"]


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


def wait_processes_ready(
    host: str, metrics_port: int, count: int, process: subprocess.Popen[bytes], timeout_s: float
) -> None:
    """Wait until every worker process reports ready on its own metrics port: /readyz on the
    shared HTTP port answers from whichever process the connection landed on."""
    deadline = time.monotonic() + timeout_s
    for index in range(count):
        url = f"http://{host}:{metrics_port + index}/metrics"
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited with code {process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if b"\nflagstream_ready 1.0" in response.read():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker process p{index} was not ready within {timeout_s:.0f}s")
            time.sleep(0.25)


# The secrets `up` hands its worker as values: their `_FILE` forms are not passed on as well
# (a worker given both refuses to start).
SECRET_FILES = ("FLAGSTREAM_ADMIN_TOKEN_FILE", "FLAGSTREAM_CHANGELOG_KEY_FILE")


def worker_secrets(keys: up_state.Keys) -> dict[str, str]:
    """The admin token and changelog key of `up`'s worker: the caller's, read as the worker
    reads them (the variable, or the file its `_FILE` names), else the data dir's."""
    from app.infra.settings import secret  # imports Faust: only when `up` runs

    return {
        "FLAGSTREAM_ADMIN_TOKEN": secret("FLAGSTREAM_ADMIN_TOKEN") or keys.admin_token,
        "FLAGSTREAM_CHANGELOG_KEY": secret("FLAGSTREAM_CHANGELOG_KEY") or keys.changelog_key,
    }


def inherited_environment(keys: up_state.Keys) -> dict[str, str]:
    """This process's environment for the worker, its secrets given as values."""
    passed_on = {name: value for name, value in os.environ.items() if name not in SECRET_FILES}
    return {**passed_on, **worker_secrets(keys)}


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_up(args: argparse.Namespace) -> int:
    """Broker + a worker (`--processes`, one per core by default) + the flags of the last run
    (else the examples); Ctrl-C stops both.

    The data dir keeps the admin token, the SDK key and the worker's table across runs; the
    table of the last run is restored into the fresh (empty) broker before anything else.
    """
    from app.cli.processes import consecutive_free_ports, process_count
    from app.infra.broker import free_port, port_open, start_broker, stop

    host = "127.0.0.1"
    processes = process_count(args.processes)
    kafka_port = args.kafka_port if not port_open(host, args.kafka_port) else free_port()
    web_port = args.port if not port_open(host, args.port) else free_port()
    metrics_port = consecutive_free_ports(host, processes, args.metrics_port)
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    keys = up_state.load_keys(data_dir)
    inherited = inherited_environment(keys)
    admin_token = inherited["FLAGSTREAM_ADMIN_TOKEN"]
    sdk_key = keys.sdk_key
    # Before the worker starts: meeting an empty broker, it would wipe the last run's table.
    previous = up_state.hand_over(data_dir)
    env = {
        **inherited,
        "FLAGSTREAM_BROKERS": f"{host}:{kafka_port}",
        "FLAGSTREAM_WEB_HOST": host,
        "FLAGSTREAM_WEB_PORT": str(web_port),
        "FLAGSTREAM_METRICS_HOST": host,
        "FLAGSTREAM_METRICS_PORT": str(metrics_port),
        "FLAGSTREAM_DATA_DIR": str(up_state.worker_dir(data_dir)),
        "FLAGSTREAM_PROCESSES": str(processes),
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
        print(
            f"starting a worker of {processes} process{'es' if processes > 1 else ''}"
            f" (data: {data_dir}, log: {log_path}) ...",
            flush=True,
        )
        with log_path.open("ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_ready(url, worker, timeout_s=120)
        wait_processes_ready(host, metrics_port, processes, worker, timeout_s=120)
        client = AdminClient(url, admin_token, actor="flagstream-up")
        restored = restore_last_run(client, previous) if previous is not None else set()
        # Asked of the restore, not of the API: with several processes a read may come from a
        # replica that has not applied the restored changes yet, and the examples would then be
        # written on top of them.
        if "development" not in restored and not client.environments().get("development"):
            apply_file(client, Path(args.file), "development", prune=False, dry_run=False)
            if Path(args.file).resolve() == EXAMPLES:
                seed_demo_exposures(url, sdk_key)
        print(
            f"\nflagstream is up.\n"
            f"  dashboard:   {url}/ui/#/e/development (sign in with the admin token below)\n"
            f"  experiment:  {url}/ui/#/e/development/x/{DEMO_EXPERIMENT}"
            f" ({DEMO_USERS} simulated users; figures appear within a minute)\n"
            f"  flags:       {url}/api/v1/environments/development/flags\n"
            f"  changes:     {url}/api/v1/environments/development/stream (server-sent events)\n"
            f"  metrics:     {metrics_urls(host, metrics_port, processes)}"
            " (Prometheus, loopback only)\n"
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


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flags.json"
DEMO_FLAG = "checkout-button-color"  # examples/flags.json: its experiment is DEMO_EXPERIMENT
DEMO_EXPERIMENT = "button-color-2026q4"
DEMO_USERS = 300


def seed_demo_exposures(url: str, sdk_key: str) -> None:
    """Evaluate the examples' experiment flag for simulated users through OFREP, as an SDK
    would: each evaluation is an exposure, so a newcomer's first experiment page has subjects
    in every variant, the split checked and exposures over time (no metric: none is sent)."""
    print(f"simulating {DEMO_USERS} users of the {DEMO_EXPERIMENT} experiment ...", flush=True)
    for user in range(DEMO_USERS):
        body = f'{{"context": {{"targetingKey": "demo-user-{user}"}}}}'.encode()
        request = urllib.request.Request(  # noqa: S310  # this worker's own http:// URL
            f"{url}/ofrep/v1/evaluate/flags/{DEMO_FLAG}",
            data=body,
            headers={"Authorization": f"Bearer {sdk_key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            answer.read()


def metrics_urls(host: str, first_port: int, processes: int) -> str:
    """The metrics URL of each worker process (process i on the first port + i)."""
    return " ".join(f"http://{host}:{first_port + i}/metrics" for i in range(processes))


def restore_last_run(client: AdminClient, previous: Path) -> set[str]:
    """Write the last run's flags and history into this run's empty broker; the environments
    it wrote."""
    print(f"restoring the flags of the last run from {previous} ...", flush=True)
    with read_table(up_state.table_dir(previous) or previous) as table:
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
    return {environment for environment, environment_steps in steps.items() if environment_steps}


# -- managing flags ------------------------------------------------------------------------
