"""The metrics an operator's alerts read (deploy/alerts.yml), on a real worker's /metrics.

Each test drives a real worker against the embedded broker and reads its metrics port, so a
metric that is declared but never observed, or observed but not registered, fails here.
"""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Worker, flag, produce, wait_until
from tests.worker_topics import topics_of


def samples(worker: Worker, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called `name` on the worker's /metrics, by its sorted labels."""
    found = {}
    for family in text_string_to_metric_families(worker.metrics()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(worker: Worker, name: str, **labels: str) -> float | None:
    return samples(worker, name).get(tuple(sorted(labels.items())))


def test_changelog_lag_is_exported_per_partition_and_zero_once_caught_up(
    worker: Worker, env: str
) -> None:
    # The embedded broker reports an end short of the last record: a lag counted against it
    # from the committed offset would go negative; counted from what was read it is 0.
    for key in ("a", "b", "c"):
        worker.admin().put(env, key, flag())
    lags = wait_until(lambda: samples(worker, "flagstream_consumer_lag_records"))
    changelog = {
        dict(labels)["partition"]: lag
        for labels, lag in lags.items()
        if dict(labels)["group"] == "flag-changelog"
    }
    assert changelog, lags
    assert set(changelog.values()) == {0.0}, changelog


def test_evaluations_lag_is_exported_once_requests_were_read(worker: Worker) -> None:
    produce(worker.brokers, topics_of(worker).evaluation_requests, [(None, b"not json")] * 3)

    def evaluation_lags() -> dict[str, float]:
        return {
            dict(labels)["partition"]: lag
            for labels, lag in samples(worker, "flagstream_consumer_lag_records").items()
            if dict(labels)["group"] == "evaluations"
        }

    lags = wait_until(evaluation_lags, timeout_s=60)
    wait_until(lambda: set(evaluation_lags().values()) == {0.0}, timeout_s=60)
    assert all(lag >= 0 for lag in lags.values())


def test_dead_letters_are_counted_by_code(worker: Worker) -> None:
    before = value(worker, "flagstream_dead_letters_total", code="MALFORMED") or 0.0
    produce(worker.brokers, topics_of(worker).evaluation_requests, [(None, b"{broken")])
    wait_until(
        lambda: (value(worker, "flagstream_dead_letters_total", code="MALFORMED") or 0.0) > before,
        timeout_s=60,
    )


def test_the_newest_change_age_counts_from_its_produce_time(worker: Worker, env: str) -> None:
    worker.admin().put(env, "fresh", flag())
    age = value(worker, "flagstream_flag_newest_change_age_seconds")
    # Just written: produced within the last minute on any loaded machine, never in the future.
    assert age is not None and not math.isnan(age), age
    assert 0 <= age < 60, age
    later = wait_until(
        lambda: (a := value(worker, "flagstream_flag_newest_change_age_seconds")) and a > age and a
    )
    assert later > age


def test_flags_are_not_stale_while_the_broker_answers(worker: Worker) -> None:
    assert value(worker, "flagstream_flags_stale_seconds") == 0.0
    assert value(worker, "flagstream_broker_reachable") == 1.0


def test_process_cpu_memory_and_event_loop_lag_are_exported(worker: Worker) -> None:
    assert (value(worker, "process_cpu_seconds_total") or 0.0) > 0
    assert (value(worker, "process_resident_memory_bytes") or 0.0) > 10_000_000
    assert value(worker, "flagstream_event_loop_lag_seconds") is not None


def test_alerted_counters_start_at_zero_before_their_first_event(worker: Worker) -> None:
    # increase() sees a first event only if the series was there at 0 before it.
    assert value(worker, "flagstream_dead_letters_total", code="VERSION_CONFLICT") == 0.0
    assert value(worker, "flagstream_guardrail_rollbacks_total", outcome="applied") == 0.0
    assert value(worker, "flagstream_exposures_total", outcome="dropped") == 0.0
    assert value(worker, "flagstream_metric_events_total", outcome="dropped") == 0.0
