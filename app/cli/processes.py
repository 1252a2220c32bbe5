"""`flagstream worker --processes N`: N worker processes behind one HTTP port, one per core.

A worker answers on one event loop, so one process uses one core however many the machine
has. With N > 1 this parent starts N children, each a whole `flagstream worker` (its own
flag table, consumer group member of every group, web server), and does nothing else but
watch them. Each child i differs from the others only in what cannot be shared:

    FLAGSTREAM_DATA_DIR      <data dir>/p<i>     RocksDB takes a lock on its directory
    FLAGSTREAM_WORKER_ID     <worker id>-p<i>    logs and flagstream_worker_info tell them apart
    FLAGSTREAM_METRICS_PORT  <metrics port> + i  Prometheus scrapes each child's registry
    FLAGSTREAM_WEB_PORT      the same for all    SO_REUSEPORT (app/web/fast_path.py): the
                                                 kernel spreads new connections over them

The parent forwards SIGTERM and SIGINT to every child and exits when all have stopped (0 when
each stopped cleanly, else 1). A child that exits on its own (a crash, the OOM killer) is not
restarted here: the parent stops the others and exits 1, so the process manager that started
it (compose `restart:`, systemd, Kubernetes) restarts the whole worker with its own backoff
and counts it, instead of a crash loop hidden inside one container. The children are in their
own process group (a terminal's Ctrl-C reaches them once, through the parent) and get SIGTERM
when the parent dies, even by SIGKILL (Linux `PR_SET_PDEATHSIG`), so none is left orphaned.

With N = 1 nothing of this runs: the worker runs in the calling process, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from app.infra.settings import Settings

__all__ = [
    "child_environment",
    "consecutive_free_ports",
    "cores",
    "die_with_parent",
    "ephemeral_ports",
    "process_count",
    "run_processes",
]

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Seconds the parent waits, beyond a child's own shutdown timeout, before it kills a child
# that has not stopped after SIGTERM (the child's ShutdownWatchdog should have ended it).
KILL_GRACE_S = 5


def cores() -> int:
    """The cores this process may run on (its CPU affinity, as `taskset` or a cgroup cpuset
    sets it), else every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def process_count(requested: int) -> int:
    """How many worker processes `requested` means: 0 is one per core."""
    if requested < 0:
        raise ValueError(f"--processes must be 0 (one per core) or more, not {requested}")
    return requested or cores()


def consecutive_free_ports(host: str, count: int, first: int | None = None) -> int:
    """`first` if it and the `count - 1` ports after it can be bound now, else the first of
    another such run (the processes of a worker serve metrics on consecutive ports), found
    below the kernel's ephemeral range when there is room.

    Bound to test, not connected to: a port an outgoing connection holds answers no connect
    but cannot be bound either. A run found by `bind(0)` would lie in the ephemeral range,
    where every outgoing connection takes its local port: Linux gives `bind(0)` odd ports and
    `connect()` even ones, so the second port of such a run was exactly the kind a connection
    made before the child bound it could hold (`up` saw its second process exit on "address
    already in use").
    """
    base = first
    while (
        base is None
        or base + count > 65536
        or not all(_bindable(host, port) for port in range(base, base + count))
    ):
        base = _candidate_base(host, count)
    return base


# The lowest port a searched run starts at: below it are the well-known services' ports.
LOWEST_SEARCHED_PORT = 10000


def ephemeral_ports() -> tuple[int, int] | None:
    """The kernel's range of local ports for outgoing connections (Linux), else None."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return None
    return int(low), int(high)


def _candidate_base(host: str, count: int) -> int:
    """A random first port of `count` below the ephemeral range; `bind(0)`'s if no room."""
    ephemeral = ephemeral_ports()
    if ephemeral is not None and ephemeral[0] - count > LOWEST_SEARCHED_PORT:
        return LOWEST_SEARCHED_PORT + secrets.randbelow(ephemeral[0] - count - LOWEST_SEARCHED_PORT)
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def child_environment(base: Mapping[str, str], settings: Settings, index: int) -> dict[str, str]:
    """The environment of child `index`: `base` with what each child must own by itself."""
    return {
        **base,
        "FLAGSTREAM_PROCESSES": "1",
        "FLAGSTREAM_DATA_DIR": str(settings.data_dir / f"p{index}"),
        "FLAGSTREAM_WORKER_ID": f"{settings.worker_id}-p{index}",
        "FLAGSTREAM_METRICS_PORT": str(settings.metrics_port + index),
    }


def die_with_parent(parent: int) -> None:
    """In a child before it runs the worker: get SIGTERM when the parent dies.

    `preexec_fn` of the child's Popen (between fork and exec; the parent has no other thread
    then). If the parent died before the request took effect, the child exits at once.
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


@dataclasses.dataclass
class Children:
    """The running children by pid, and whether this parent has asked them to stop."""

    running: dict[int, int]  # pid -> index
    stopping: bool = False
    failed: bool = False

    def signal_all(self, signum: int) -> None:
        for pid in self.running:
            with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
                os.kill(pid, signum)

    def stop(self, signum: int, grace_s: float) -> None:
        """Pass `signum` on to every child; kill the ones still running `grace_s` later."""
        if not self.stopping:
            self.stopping = True
            signal.signal(signal.SIGALRM, lambda *_: self.signal_all(signal.SIGKILL))
            signal.alarm(max(1, round(grace_s)))
        self.signal_all(signum)


def run_processes(settings: Settings, count: int) -> int:
    """Start `count` workers on the port of `settings`, watch them until they stop.

    0 when every child stopped cleanly after SIGTERM/SIGINT; 1 when a child exited on its
    own (the others are stopped) or did not stop cleanly.
    """
    grace_s = settings.shutdown_timeout_s + KILL_GRACE_S
    parent = os.getpid()
    children = Children(running={})
    for index in range(count):
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--processes", "1"],
            env=child_environment(os.environ, settings, index),
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(parent),  # no other thread runs here
        )
        process.returncode = 0  # reaped below by os.wait, never by this Popen
        children.running[process.pid] = index

    def forward(signum: int, _: FrameType | None) -> None:
        children.stop(signum, grace_s)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while children.running:
        pid, status = os.wait()
        if pid not in children.running:
            continue
        index = children.running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if not children.stopping:
            print(
                f"flagstream: worker process p{index} (pid {pid}) exited with {code}; "
                "stopping the others",
                file=sys.stderr,
                flush=True,
            )
            children.failed = True
            children.stop(signal.SIGTERM, grace_s)
        elif code not in (0, -signal.SIGTERM, -signal.SIGINT):
            children.failed = True
    signal.alarm(0)
    return 1 if children.failed else 0
