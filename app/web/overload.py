"""Overload: when a worker's OFREP answers would wait too long, shed some with a cheap 429.

What "the queue" is here. The fast path answers a request synchronously in the callback that
reads it, so no queue of requests exists in the worker: a request waits in the kernel (the
accept queue, its socket's receive buffer) until the event loop gets round to its socket, and
the loop gets round to it once it has run every callback that was ready before. So the wait a
request sees is how late the loop runs what became ready: the event loop's lag. `LoopLag`
measures it with a timer that asks to run every `SAMPLE_S` and notes how late it ran (as
Node's toobusy does). Two readings make `lag`:

* how overdue the armed timer is now: the least every request read in this turn of the loop
  has waited (the kernel held it while the loop ran what was ready before). It is what stops
  a burst within its first turn: once the turn has run past the threshold, the requests still
  to be read in it are shed, not evaluated;
* the median of the last three samples: lag that lasts. One long callback (a compile, a GC
  pause) makes one sample late and leaves nothing behind it, so requests sent one by one
  after it are answered; under a spike most samples are late, so every turn sheds from its
  start instead of only once it has run long. The median, not the smaller of the last two
  (which this was first): under a spike on a worker that shares its cores, the samples
  swing (the loop ran a long turn, then was descheduled or ran a short one), and one
  on-time sample in two halved the reading. The samples a shedding worker took in
  `benchmarks/bench_spike.py`'s spike (2 cores, load average 15) read 130 ms as a median
  of three against 79 ms as the smaller of two: a shed share of 0.90 against 0.46 at a
  50 ms threshold, while the worker answered a third of what was sent.

Why not another signal (those issue 11 item 7 weighed; reasoned from how requests are read):

* requests in progress (read, not yet answered): the fast path answers a request in the
  callback that reads it, so none is ever in progress there, and aiohttp holds one for a few
  turns of the loop, which the lag sees too: a spike's requests wait before they are read;
* the age of a request from the read of its head: it is read when the loop gets round to
  its socket, so on the fast path it is answered in the same callback (age ~0 however long
  it waited in the kernel); the kernel's arrival time is not read through asyncio;
* the accept backlog (a small listen backlog, so the kernel refuses): SDKs keep their
  connections open, so a spike arrives on connections accepted long before.

What is shed. Past the threshold (FLAGSTREAM_SHED_LOOP_LAG_MS) a share of the requests grows
with the lag: (lag - threshold) / threshold, so all of them at twice the threshold. A 429 costs
a few µs (no body decoded, nothing evaluated), so shedding a share frees the loop for the
others, and the lag of a loop under a 10x spike settles between one and two thresholds instead
of growing with the spike: answered requests keep a bounded wait, the rest are told to come
back after `RETRY_AFTER_S` (OFREP's `Retry-After`, which the official providers honour).
Shedding all at once above the threshold would swing the lag between empty and full.

A turn's time budget. The lag alone over-shed a spike of bulk evaluations (~0.5-1 ms each):
the fast path answers every request read in one turn back to back (`app.web.fast_path`
`Connections.answer_ready`), so a turn that read a hundred of them ran for 50-100 ms, every
sample was late, and the share shed stayed near all while the worker could have answered far
more (`benchmarks/bench_spike.py`, issue 11 item 7: 233 answers/s in the spike against a
capacity of ~1,585/s, 95% shed). So each turn of the loop also answers for a budget of time,
from its first request's `sheds`: past it, the turn's other requests are shed (a 429 costs no
body decode, no evaluation), in the order they came, and the next turn starts afresh. A turn
then lasts about its budget plus a few µs per request shed, the timer runs about that late,
and the lag stays under the threshold: the share by lag sheds only what the turns cannot
bound (a host that deschedules the worker, requests read faster than 429s are written).
The budget is `TURN_BUDGET_SHARE` (0.4) of the threshold, 20 ms at the default 50 ms, not a
setting of its own: the threshold is the wait an operator accepts, and the budget only means
something below it. 0.4 leaves 60% of the threshold for what a turn does besides answering
(shedding the rest, writing, the kernel's reads) before the timer reads the threshold; a much
smaller budget would spend the worker on turns (a select, a read and a write per connection)
and on 429s rather than on answers. A request that comes in a quiet turn is never shed by it.

Only OFREP evaluations are shed (the fast path and `app.web.ofrep`'s routes): health, readiness,
metrics and the admin API answer whatever the load, so an overloaded worker is still seen and
still written to.

The lag includes the time the OS does not run the worker: on a host with more runnable
processes than cores (or a container throttled at its CPU quota) requests wait that long too,
and are shed alike. So the threshold must sit above the host's scheduling noise: 50 ms by
default; on a 2-core machine at a load average of 12 the noise alone passes it.

The timer runs only while requests come: with none in a sample it is not armed again, so an
idle worker pays nothing.
"""

from __future__ import annotations

import asyncio
import random
from typing import Final

from prometheus_client import Counter

from app.infra.records import dumps

__all__ = ["RETRY_AFTER_S", "SAMPLE_S", "TURN_BUDGET_SHARE", "LoopLag", "shed_body"]

# Seconds between two looks at the loop's lag while requests come in.
SAMPLE_S: Final = 0.025
# Seconds a shed client is asked to wait (`Retry-After`): long enough for a spike's excess to
# go elsewhere, short enough that the SDK's next evaluation after it comes back here.
RETRY_AFTER_S: Final = 1
SHED_DETAILS: Final = f"the worker is overloaded: retry after {RETRY_AFTER_S} s"
# A turn of the loop answers for this share of the threshold, then sheds the rest of its
# requests (the module docstring says why 0.4).
TURN_BUDGET_SHARE: Final = 0.4


def shed_body(key: str | None) -> bytes:
    """The OFREP error body of a shed request: `evaluationFailure` (one flag, with its key)
    or `bulkEvaluationFailure` (every flag)."""
    body = {"errorCode": "GENERAL", "errorDetails": SHED_DETAILS}
    return dumps(body if key is None else {"key": key, **body})


class LoopLag:
    """The event loop's lag, sampled while requests come, and whether to shed a request."""

    __slots__ = (
        "_due",
        "_lasting",
        "_loop",
        "_older",
        "_previous",
        "_random",
        "_sampled",
        "_shed",
        "_threshold",
        "_turn_began",
        "_turn_budget",
        "_used",
    )

    def __init__(self, threshold_s: float, shed: Counter) -> None:
        self._threshold = threshold_s  # 0 or less: never shed
        self._shed = shed  # flagstream_shed_requests_total, by path
        self._loop: asyncio.AbstractEventLoop | None = None  # set while the timer is armed
        self._due = 0.0  # loop time the armed timer asked to run at
        self._sampled = 0.0  # how late (s) the timer ran last time
        self._previous = 0.0  # and the time before
        self._older = 0.0  # and the time before that
        self._lasting = 0.0  # the median of those three, kept when a sample is taken
        self._used = False  # a request asked since the timer last ran
        self._random = random.random
        self._turn_budget = threshold_s * TURN_BUDGET_SHARE
        self._turn_began = -1.0  # loop time of this turn's first request (-1: none yet)

    @property
    def sampled_s(self) -> float:
        """The lag that lasts, in seconds: the median of the last three samples, what `sheds`
        reads besides the armed timer (0 while idle)."""
        return self._lasting

    @property
    def turn_budget_s(self) -> float:
        """Seconds of a loop turn spent answering before its other requests are shed."""
        return self._turn_budget

    def lag(self) -> float:
        """Seconds a request read now has waited, or the loop has lagged lately, whichever is
        more (see the module docstring)."""
        loop = self._loop
        if loop is None:
            return 0.0
        return max(self._lasting, loop.time() - self._due)

    def sheds(self, path: str) -> bool:
        """Whether to answer this request 429 (counted under `path`, a route template).

        Called for every OFREP request, so it reads the clock once: a clock read costs
        about four trivial Python operations, and reading it twice (the turn's budget, then
        the lag) made this 1.2-1.8 µs a request, 0.5-0.7 µs once (issue 11, H7: same process,
        interleaved, a 2-vCPU VM at load average 10); the median of the samples is kept when
        a sample is taken.
        """
        threshold = self._threshold
        if threshold <= 0:
            return False
        self._used = True
        loop = self._loop
        if loop is None:
            loop = self._arm(asyncio.get_running_loop())
        now = loop.time()
        if self._over_turn_budget(loop, now):
            self._shed.labels(path).inc()
            return True
        over = (max(self._lasting, now - self._due) - threshold) / threshold
        if over <= 0 or (over < 1 and self._random() >= over):
            return False
        self._shed.labels(path).inc()
        return True

    def _over_turn_budget(self, loop: asyncio.AbstractEventLoop, now: float) -> bool:
        """Whether this turn of the loop has answered for its budget already at loop time
        `now`; the turn's first request starts it, and a callback scheduled now (run after
        every callback of this turn) ends it."""
        began = self._turn_began
        if began < 0:
            self._turn_began = now
            loop.call_soon(self._end_turn)
            return False
        return now - began > self._turn_budget

    def _end_turn(self) -> None:
        self._turn_began = -1.0

    def _arm(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        self._loop = loop
        self._due = loop.time() + SAMPLE_S
        loop.call_at(self._due, self._sample)
        return loop

    def _sample(self) -> None:
        loop = self._loop
        if loop is None:
            return
        older, previous = self._older, self._previous = self._previous, self._sampled
        sampled = self._sampled = max(0.0, loop.time() - self._due)
        self._lasting = max(min(older, previous), min(max(older, previous), sampled))
        if self._used:
            self._used = False
            self._arm(loop)
        else:  # no request for a whole sample: idle, nothing to measure for
            self._loop, self._sampled, self._previous, self._older = None, 0.0, 0.0, 0.0
            self._lasting = 0.0
