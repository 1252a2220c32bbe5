"""The gap-free change stream: ids are per-environment sequence numbers, resumption is exact."""

from __future__ import annotations

from tests.conftest import READ_TOKEN, EventStream, Worker, flag


def stream_url(worker: Worker, env: str) -> str:
    return f"{worker.url}/api/v1/environments/{env}/stream"


def test_a_new_client_gets_a_snapshot_then_every_change(worker: Worker, env: str) -> None:
    admin = worker.admin()
    admin.put(env, "a", flag())
    admin.put(env, "b", flag())
    events = EventStream(stream_url(worker, env), token=READ_TOKEN)
    try:
        seq, kind, data = events.next()
        assert (seq, kind) == (2, "snapshot")
        assert set(data["flags"]) == {"a", "b"}
        admin.set_state(env, "a", "DISABLED")
        admin.delete(env, "b")
        assert events.next()[:2] == (3, "change")
        seq, kind, data = events.next()
        assert (seq, kind, data["op"], data["flag"], data["definition"]) == (
            4,
            "change",
            "delete",
            "b",
            None,
        )
    finally:
        events.close()


def test_resuming_with_last_event_id_gives_exactly_the_missed_changes(
    worker: Worker, env: str
) -> None:
    admin = worker.admin()
    for key in ("a", "b", "c", "d"):
        admin.put(env, key, flag())
    events = EventStream(stream_url(worker, env), last_event_id=1)
    try:
        missed = [events.next() for _ in range(3)]
        assert [(seq, kind, data["flag"]) for seq, kind, data in missed] == [
            (2, "change", "b"),
            (3, "change", "c"),
            (4, "change", "d"),
        ]
        admin.put(env, "e", flag())
        assert events.next()[:2] == (5, "change"), (
            "live changes follow the replayed ones without a gap"
        )
    finally:
        events.close()


def test_a_client_that_is_up_to_date_gets_only_new_changes(worker: Worker, env: str) -> None:
    admin = worker.admin()
    admin.put(env, "a", flag())
    events = EventStream(stream_url(worker, env), last_event_id=1)
    try:
        admin.put(env, "b", flag())
        seq, kind, data = events.next()
        assert (seq, kind, data["flag"]) == (2, "change", "b")
    finally:
        events.close()
