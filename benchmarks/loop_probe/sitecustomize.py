"""What a saturated worker's event loop runs besides answering (benchmarks/bench_loop_turns.py).

Python imports `sitecustomize` at start from the path, so a worker started with this directory
on PYTHONPATH and FLAGSTREAM_LOOP_PROBE=<file> measures itself; without the variable it does
nothing. The window is open while `<file>.on` exists; when it is removed the figures go to
`<file>` as JSON:

* `gc`: every collection of the window by generation (count, CPU ms total and longest), from
  `gc.callbacks`;
* `threads_cpu_s`: CPU seconds each thread of the process used in the window (/proc): does
  anything besides the event loop's thread (Faust's consumer thread, RocksDB's) compete;
* `turns` and `callbacks` (asyncio's own loop only, FLAGSTREAM_EVENT_LOOP=asyncio: uvloop's
  handles are C): CPU time of each turn of the main loop and of each callback by bucket, the
  callbacks of 0.5 ms or more by name (a task by its coroutine), and the turns of 3 ms or more
  by the callbacks other than answering (the fast path's reads and `answer_ready`) that ran
  in them.

CPU time (`time.thread_time`), not wall time: on a shared machine a wall-clock figure is
mostly the scheduler's.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import re
import threading
import time
from typing import Any

OUT = os.environ.get("FLAGSTREAM_LOOP_PROBE")
SLOW_CALLBACK_MS = 0.5
LONG_TURN_MS = 3.0
# Answering: the fast path's reads of its sockets and its answers.
ANSWERING = frozenset({"Connections.answer_ready", "_SelectorSocketTransport._read_ready"})


def _bucket(ms: float, bounds: tuple[float, ...]) -> str:
    return next((f"<{bound:g} ms" for bound in bounds if ms < bound), f">={bounds[-1]:g} ms")


class Probe:
    """The window's figures, kept by the hooks and written when the window closes."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.open = False
        self.gc_started = 0.0
        self.collections: list[tuple[int, float]] = []
        self.callbacks: collections.Counter[str] = collections.Counter()
        self.turns: collections.Counter[str] = collections.Counter()
        self.slow: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
        self.long_turns: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
        self.in_turn: list[Any] = []  # the callbacks run in this turn, named if it is long
        self.threads_at_open: dict[str, float] = {}

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.gc_started = time.thread_time()
        elif self.open:
            self.collections.append((info["generation"], time.thread_time() - self.gc_started))

    def watch(self) -> None:
        """Open and close the window as `<out>.on` comes and goes (a thread of its own)."""
        while True:
            time.sleep(0.5)
            if os.path.exists(self.out + ".on") and not self.open:
                self.collections.clear()
                self.callbacks.clear()
                self.turns.clear()
                self.slow.clear()
                self.long_turns.clear()
                self.threads_at_open = thread_cpu()
                self.open = True
            elif not os.path.exists(self.out + ".on") and self.open:
                self.open = False
                self.write()

    def write(self) -> None:
        by_generation: dict[int, list[float]] = collections.defaultdict(list)
        for generation, seconds in self.collections:
            by_generation[generation].append(seconds * 1e3)
        now = thread_cpu()
        figures = {
            "gc": {
                str(g): {"count": len(ms), "total_ms": sum(ms), "longest_ms": max(ms)}
                for g, ms in sorted(by_generation.items())
            },
            "gc_frozen_objects": gc.get_freeze_count(),
            "threads_cpu_s": {
                name: round(cpu - self.threads_at_open.get(name, 0.0), 3)
                for name, cpu in now.items()
            },
            "turns": dict(self.turns),
            "callbacks": dict(self.callbacks),
            "slow_callbacks": sorted(
                ([name, *values] for name, values in self.slow.items()), key=lambda r: -r[2]
            ),
            "long_turns": sorted(
                ([name, *values] for name, values in self.long_turns.items()),
                key=lambda r: -r[2],
            ),
        }
        with open(self.out, "w") as file:
            json.dump(figures, file, indent=1)


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by `tid:name`."""
    cpu = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as file:
                stat = file.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rpartition(")")[2].split()
        cpu[f"{tid}:{name}"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu


_ADDRESS = re.compile(r" at 0x[0-9a-f]+|<Handle |>$| created at.*")


def callback_name(callback: Any) -> str:
    """A callback's function, or for a task's step the task's coroutine."""
    text = repr(callback)
    coroutine = getattr(getattr(callback, "__self__", None), "get_coro", lambda: None)()
    if coroutine is not None and ("wakeup" in text or "step" in text):
        name = getattr(coroutine, "__qualname__", repr(coroutine))
        if name == "Service._execute_task":  # mode's wrapper of a service's task or timer
            inner = coroutine.cr_frame.f_locals.get("task") if coroutine.cr_frame else None
            name += f" ({getattr(inner, '__qualname__', inner)})"
        return "task " + name
    return _ADDRESS.sub("", getattr(callback, "__qualname__", None) or text)[:100]


def time_asyncio_callbacks(probe: Probe) -> None:
    """Time every callback and turn of asyncio's own loop on the main thread."""
    import asyncio.base_events
    import asyncio.events

    run_handle = asyncio.events.Handle._run
    run_once = asyncio.base_events.BaseEventLoop._run_once
    main = threading.main_thread()

    def timed_run(handle: asyncio.events.Handle) -> None:
        if not probe.open or threading.current_thread() is not main:
            return run_handle(handle)
        started = time.thread_time()
        try:
            return run_handle(handle)
        finally:
            ms = (time.thread_time() - started) * 1e3
            callback = handle._callback  # type: ignore[attr-defined]
            probe.in_turn.append(callback)
            probe.callbacks[_bucket(ms, (0.1, 0.5, 1, 2, 5, 10))] += 1
            if ms >= SLOW_CALLBACK_MS:
                slow = probe.slow[callback_name(callback)]
                slow[0] += 1
                slow[1] += ms
                slow[2] = max(slow[2], ms)

    def timed_turn(loop: asyncio.base_events.BaseEventLoop) -> None:
        if not probe.open or threading.current_thread() is not main:
            return run_once(loop)  # type: ignore[no-any-return]
        probe.in_turn.clear()
        started = time.thread_time()
        try:
            return run_once(loop)  # type: ignore[no-any-return]
        finally:
            ms = (time.thread_time() - started) * 1e3
            probe.turns[_bucket(ms, (1, 2, 3, 4, 6, 10))] += 1
            if ms >= LONG_TURN_MS:
                names = {callback_name(callback) for callback in probe.in_turn}
                others = sorted(names - ANSWERING)
                turn = probe.long_turns[" + ".join(others) or "(answers only)"]
                turn[0] += 1
                turn[1] += ms

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
    asyncio.base_events.BaseEventLoop._run_once = timed_turn  # type: ignore[method-assign]


if OUT:
    _probe = Probe(OUT)
    gc.callbacks.append(_probe.on_gc)
    if os.environ.get("FLAGSTREAM_EVENT_LOOP") == "asyncio":
        time_asyncio_callbacks(_probe)
    threading.Thread(target=_probe.watch, daemon=True, name="loop-probe").start()
