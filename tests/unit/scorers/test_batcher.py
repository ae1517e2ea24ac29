from __future__ import annotations

import pytest

from scorers.batcher import MicroBatcher, ResultCountMismatch


def test_closes_on_size() -> None:
    mb: MicroBatcher[int] = MicroBatcher(max_size=3, linger_s=1.0, deadline_s=10.0)
    for i in range(4):
        mb.add(i, now=0.0)
    batch = mb.poll_ready(0.0)
    assert batch is not None and batch.items == (0, 1, 2) and batch.reason == "size"
    assert mb.pending == 1


def test_closes_on_linger_since_first_record() -> None:
    mb: MicroBatcher[str] = MicroBatcher(max_size=10, linger_s=0.01, deadline_s=1.0)
    assert mb.time_until_ready(0.0) is None
    mb.add("a", now=0.0)
    mb.add("b", now=0.008)
    assert mb.poll_ready(0.009) is None
    assert mb.time_until_ready(0.009) == pytest.approx(0.001)
    batch = mb.poll_ready(0.010)
    assert batch is not None and batch.reason == "linger" and len(batch) == 2
    assert batch.deadline_at_s == pytest.approx(1.0)


def test_closes_early_for_the_earliest_deadline_using_ewma() -> None:
    mb: MicroBatcher[int] = MicroBatcher(max_size=100, linger_s=1.0, deadline_s=0.05,
                                         margin_s=0.0, ewma_alpha=1.0)
    mb.record_inference(0.03)
    assert mb.inference_estimate_s == pytest.approx(0.03)
    mb.add(1, now=0.0)
    assert mb.time_until_ready(0.0) == pytest.approx(0.02)
    assert mb.poll_ready(0.019) is None
    batch = mb.poll_ready(0.0201)
    assert batch is not None and batch.reason == "deadline"


def test_per_record_deadline_and_ewma_smoothing() -> None:
    mb: MicroBatcher[int] = MicroBatcher(max_size=100, linger_s=1.0, deadline_s=1.0,
                                         ewma_alpha=0.5, margin_s=0.0)
    mb.record_inference(0.1)
    mb.record_inference(0.3)
    assert mb.inference_estimate_s == pytest.approx(0.175)
    mb.add(1, now=0.0)
    mb.add(2, now=0.0, deadline_s=0.2)
    assert mb.time_until_ready(0.0) == pytest.approx(0.2 - 0.175)


def test_in_flight_cap_and_complete_counts() -> None:
    mb: MicroBatcher[int] = MicroBatcher(max_size=2, linger_s=0.0, deadline_s=1.0, max_in_flight=1)
    for i in range(4):
        mb.add(i, now=0.0)
    first = mb.poll_ready(0.0)
    assert first is not None and mb.in_flight == 1
    assert mb.poll_ready(0.0) is None and mb.time_until_ready(0.0) is None
    with pytest.raises(ResultCountMismatch):
        mb.complete(first, ["only one"])
    second = mb.poll_ready(0.0)
    assert second is not None
    assert mb.complete(second, ["x", "y"]) == [(2, "x"), (3, "y")]
    with pytest.raises(KeyError):
        mb.complete(second, ["x", "y"])


def test_backpressure_and_flush() -> None:
    mb: MicroBatcher[int] = MicroBatcher(max_size=2, linger_s=5.0, deadline_s=10.0,
                                         max_in_flight=1, max_pending=5)
    for i in range(5):
        mb.add(i, now=0.0)
    assert not mb.accepting
    with pytest.raises(OverflowError):
        mb.add(99, now=0.0)
    batches = mb.flush(now=0.0)
    assert [b.items for b in batches] == [(0, 1), (2, 3), (4,)]
    assert all(b.reason == "flush" for b in batches) and mb.pending == 0
    for b in batches:
        mb.abandon(b)
    assert mb.in_flight == 0


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(max_size=0, linger_s=0.0, deadline_s=1.0)


def test_retain_drops_rejected_records_and_keeps_arrival_times() -> None:
    mb: MicroBatcher[tuple[int, str]] = MicroBatcher(max_size=10, linger_s=1.0, deadline_s=5.0)
    mb.add((0, "a"), now=0.0)
    mb.add((1, "b"), now=0.1)
    mb.add((0, "c"), now=0.2)
    assert mb.retain(lambda item: item[0] != 1) == 1  # partition 1 revoked at t=0.3
    assert mb.pending == 2
    assert mb.time_until_ready(0.3) == pytest.approx(0.7)  # linger still counts from t=0
    batch = mb.poll_ready(1.0)
    assert batch is not None and batch.items == ((0, "a"), (0, "c"))
    assert batch.first_added_at_s == 0.0 and batch.deadline_at_s == pytest.approx(5.0)


def test_batch_names_when_its_first_record_arrived() -> None:
    mb: MicroBatcher[int] = MicroBatcher(max_size=2, linger_s=1.0, deadline_s=0.5)
    mb.add(1, now=3.0)
    mb.add(2, now=3.25)
    batch = mb.poll_ready(3.25)
    assert batch is not None and batch.first_added_at_s == 3.0
