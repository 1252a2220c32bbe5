"""How often the worker's garbage collector looks at young objects.

CPython runs a young-generation collection every 700 net allocations of container objects
(its default), and an OFREP request allocates a few dozen: at ~30,000 requests a second the
collector ran hundreds of times a second, each pass walking what the requests left alive
meanwhile (connections, futures, buffers), and every tenth one the middle generation too. At
50,000 the worker answered the same requests with 1.8-5.6 µs less CPU each (5-14%, two runs
of `bench_ofrep.py --variant`, benchmarks/RESULTS.md). Reference counting still frees almost
everything at once; the collector only finds cycles, which now wait a little longer, and the
start's long-lived objects are frozen out of its passes anyway (`gc.freeze` after the
catch-up and the first compile).
"""

from __future__ import annotations

import gc

__all__ = ["tune_collector"]


def tune_collector(young_threshold: int) -> None:
    """Collect the young generation every `young_threshold` allocations (0: leave CPython's
    thresholds as they are); the older generations keep their ratios."""
    if young_threshold < 0:
        raise ValueError(f"FLAGSTREAM_GC_YOUNG_THRESHOLD must be 0 or more: {young_threshold}")
    if young_threshold:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)
