"""The composition root's start order: the flag table catches up while Faust joins its group."""

from __future__ import annotations

from tests.conftest import Worker

REPLICATION_STARTS = "[^--FlagReplication]: Starting"
JOIN_STARTS = "(Re-)joining group"  # the consumer's first join: it waits the rebalance delay


def test_the_flag_table_starts_catching_up_before_the_group_join(worker: Worker) -> None:
    """A group join waits out the broker's rebalance delay (seconds, idle); the table reads
    the changelog in that wait rather than after it, so many flags add nothing to a worker's
    start until their catch-up outlasts the join.

    Seen failing when the replication was one of Faust's extra services: those start after
    table recovery, which waits for the join ("Worker ready"), so its line came after it.
    """
    lines = worker.log_path.read_text(errors="replace").splitlines()
    replication = next(n for n, line in enumerate(lines) if REPLICATION_STARTS in line)
    join = next(n for n, line in enumerate(lines) if JOIN_STARTS in line)
    assert replication < join
