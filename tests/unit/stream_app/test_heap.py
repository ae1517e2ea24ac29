"""The heap settling and the GC pause watch (stream_app.live.heap)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from stream_app.live.heap import LOG_PAUSE_S, GcPauses, settle_heap
from stream_app.metrics import Metrics


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process keeps collecting what its tests leave


def test_settle_heap_freezes_what_is_alive_and_collects_the_garbage(unfrozen: None) -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the cyclic collector frees it

    Node()
    keep = [Node() for _ in range(10)]
    frozen = settle_heap()
    assert frozen == gc.get_freeze_count() > 10
    assert all(not gc.is_finalized(n) for n in keep)
    assert gc.collect() == 0 or gc.get_freeze_count() == frozen  # nothing frozen is rescanned


def test_each_collection_is_timed_with_its_generation() -> None:
    now = [0.0]
    seen: list[tuple[int, float]] = []
    watch = GcPauses(lambda gen, s: seen.append((gen, s)), clock=lambda: now[0])
    watch("start", {"generation": 0})
    now[0] = 0.001
    watch("stop", {"generation": 0, "collected": 3})
    watch("start", {"generation": 2})
    now[0] = 0.001 + LOG_PAUSE_S * 3
    watch("stop", {"generation": 2, "collected": 0})
    assert seen == [(0, pytest.approx(0.001)), (2, pytest.approx(LOG_PAUSE_S * 3))]
    assert watch.collections == 2 and watch.longest_s == pytest.approx(LOG_PAUSE_S * 3)


def test_the_watch_reports_real_collections_into_the_metric() -> None:
    metrics = Metrics()
    watch = GcPauses(metrics.gc_pause).start()
    try:
        gc.collect(2)
    finally:
        watch.stop()
    assert watch not in gc.callbacks and watch.collections >= 1
    count = metrics.registry.get_sample_value("rung_gc_pause_seconds_count",
                                              {"generation": "2"})
    assert count is not None and count >= 1
