"""Validation problems as plain values.

Errors are values here: validators return a list of ``Problem`` instead of
raising, so callers (the HTTP API, the Kafka ingest path, the CLI) can report
every problem at once, sort and compare them in tests, and never have to guess
which exception a validator might throw on hostile input.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a document.

    ``path`` is a JSON path rooted at ``$`` (``$.flags.myFlag.variants``,
    ``$.variants.on``, ``$.targeting.if[0]``) so the problem can be pointed at
    in the original JSON; ``message`` is a short human-readable explanation.
    """

    path: str
    message: str
