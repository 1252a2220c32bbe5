"""The work budget of one evaluation, so that one flag cannot stall a worker.

Compile-time bounds (``app.engine.jsonlogic``) refuse targeting that is explosive on its
face. What a rule builds or walks also depends on the context (an array's length, a
string's size, a structure that shares its parts), so the operations whose cost is not
constant charge this budget as they go: array operations per item, ``cat``/``substr``
per character built, ``merge`` per item, ``in`` per item scanned, and walks of nested
arrays (text, equality, CBOR) per element visited. Each targeted evaluation starts with
``WORK_PER_EVALUATION`` units; when they run out, ``BudgetExceededError`` ends the evaluation
and ``compile_flag``'s resolver turns it into an ERROR / GENERAL resolution.

The meter is one counter of the process, reset at the start of every targeted evaluation
(one attribute store: the only cost ordinary flags pay). Evaluation is synchronous and
runs on one thread (the worker's event loop), so the counter belongs to the evaluation
that is running; it is state of the engine, not I/O, and no result depends on it except
through the bound.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EXCEEDED",
    "MAX_ARRAY_ITEMS",
    "MAX_LOOP_ITEMS",
    "MAX_STRING_CHARS",
    "METER",
    "STEP_COST",
    "WORK_PER_EVALUATION",
    "BudgetExceededError",
    "Meter",
    "charge",
    "reset",
    "too_long",
]

#: Work units of one evaluation. A unit is about one character built or one array item
#: scanned by C code; a step of Python work (a node run inside an array operation, an
#: element visited when walking nested arrays) costs STEP_COST. 2**20 units are at most
#: a few tens of ms of CPU, whatever the flag and the context (docs/engine.md).
WORK_PER_EVALUATION: Final = 2**20
#: Units of one step of Python work (~0.3-0.6 us, as long as copying ~16 characters is not).
STEP_COST: Final = 16
#: Longest string an operation may build (``cat``, ``substr``, an array as text).
MAX_STRING_CHARS: Final = 65_536
#: Longest array ``merge`` may build (array operations take at most MAX_LOOP_ITEMS).
MAX_ARRAY_ITEMS: Final = 10_000
#: Longest array that ``map``/``filter``/``reduce``/``all``/``some``/``none`` iterate.
MAX_LOOP_ITEMS: Final = 1_000
#: The start of every message of a resolution ended by the budget.
EXCEEDED: Final = "evaluation budget exceeded"


class BudgetExceededError(Exception):
    """The running evaluation used its budget; ``message`` says what exceeded it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = f"{EXCEEDED}: {message}"


class Meter:
    """The units left to the running evaluation."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = WORK_PER_EVALUATION


METER: Final = Meter()


def charge(units: int, what: str) -> None:
    """Spend ``units`` of the running evaluation's budget; raise when it is used up."""
    left = METER.left - units
    METER.left = left
    if left < 0:
        raise BudgetExceededError(f"{what} (budget {WORK_PER_EVALUATION:,} units)")


def reset() -> None:
    """Give the next evaluation a full budget (tests that run rules directly call this)."""
    METER.left = WORK_PER_EVALUATION


def too_long(what: str, size: int, limit: int, unit: str) -> BudgetExceededError:
    """The error for a value over one of the size limits."""
    return BudgetExceededError(f"{what} of {size:,} {unit} (at most {limit:,})")
