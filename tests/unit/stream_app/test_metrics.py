"""stream_app.metrics: every call lands in the right series with the right value."""

from __future__ import annotations

import inspect

import numpy as np
import orjson
import pytest

from scorers.listeners import LadderListener, SafeListener
from stream_app.metrics import LATENCY_BUCKETS_S, BulkHistogram, Metrics
from topics.schemas import Tier


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_every_name_is_prefixed_and_counters_end_in_total() -> None:
    m = Metrics()
    for family in m.registry.collect():
        assert family.name.startswith("rung_"), family.name
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith("_created"):
                assert sample.name.endswith("_total"), sample.name


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.records_in("transactions", 3)
    assert value(a, "rung_records_in_total", topic="transactions") == 3
    assert value(b, "rung_records_in_total", topic="transactions") is None


def test_worker_counters() -> None:
    m = Metrics()
    m.records_in("transactions", 5)
    m.records_in("transactions", 2)
    m.scores_out(Tier.FALLBACK, "fb-1", 4)
    m.scores_out("primary", "p-7", 3)
    m.dead_lettered("decode")
    m.dead_lettered("validation", 2)
    m.reviewed(6)
    m.transaction_aborted("produce_error")
    assert value(m, "rung_records_in_total", topic="transactions") == 7
    assert value(m, "rung_scores_total", tier="fallback", model_version="fb-1") == 4
    assert value(m, "rung_scores_total", tier="primary", model_version="p-7") == 3
    assert value(m, "rung_dead_letter_total", reason="decode") == 1
    assert value(m, "rung_dead_letter_total", reason="validation") == 2
    assert value(m, "rung_review_flags_total") == 6
    assert value(m, "rung_transaction_aborts_total", reason="produce_error") == 1


def test_listener_implements_every_hook_of_the_core() -> None:
    m = Metrics()
    hooks = {n for n, _ in inspect.getmembers(LadderListener, inspect.isfunction) if n.startswith("on_")}
    assert hooks  # the contract has hooks at all
    for name in hooks:
        assert getattr(type(m.ladder_listener), name) is not getattr(LadderListener, name), name


def test_listener_hooks_record() -> None:
    m = Metrics()
    lst = SafeListener(m.ladder_listener)
    lst.on_batch_formed(64, "size")
    lst.on_batch_formed(3, "linger")
    lst.on_tier_result(Tier.PRIMARY, "p-7", 60)
    lst.on_tier_result(Tier.DEFAULT, "safe-default", 4)
    lst.on_degraded(Tier.PRIMARY, "timeout", 4)
    lst.on_deadline_miss("primary")
    lst.on_cache("hit", 10)
    lst.on_cache("stale", 2)
    lst.on_stage_duration("features", 0.004)
    assert value(m, "rung_batches_total", reason="size") == 1
    assert value(m, "rung_batch_size_records_count") == 2
    assert value(m, "rung_batch_size_records_sum") == 67
    assert value(m, "rung_batch_size_records_bucket", le="4.0") == 1
    assert value(m, "rung_ladder_answers_total", tier="primary", model_version="p-7") == 60
    assert value(m, "rung_ladder_answers_total", tier="default", model_version="safe-default") == 4
    assert value(m, "rung_degraded_total", from_tier="primary", reason="timeout") == 4
    assert value(m, "rung_deadline_misses_total", stage="primary") == 1
    assert value(m, "rung_deadline_misses_total", stage="rules") == 0  # present before any miss
    assert value(m, "rung_cache_lookups_total", outcome="hit") == 10
    assert value(m, "rung_cache_lookups_total", outcome="stale") == 2
    assert value(m, "rung_cache_lookups_total", outcome="miss") == 0
    assert value(m, "rung_stage_duration_seconds_count", stage="features") == 1
    assert value(m, "rung_stage_duration_seconds_bucket", stage="features", le="0.005") == 1
    assert value(m, "rung_stage_duration_seconds_bucket", stage="features", le="0.0025") == 0


def test_internal_errors_are_counted_and_logged_with_the_traceback() -> None:
    import structlog

    m = Metrics()
    lst = SafeListener(m.ladder_listener)
    try:
        raise ZeroDivisionError("bug in a tier")
    except ZeroDivisionError as exc:
        err = exc
    with structlog.testing.capture_logs() as logs:
        lst.on_internal_error("enrichment", err)
    lst.on_cache_revalidation_dropped(3)
    assert value(m, "rung_internal_errors_total", stage="enrichment") == 1
    lst.on_shed("overload", 4)
    assert value(m, "rung_cache_revalidation_dropped_total") == 3
    assert value(m, "rung_shed_records_total", reason="overload") == 4
    assert [(e["event"], e["stage"], e["log_level"]) for e in logs] == [
        ("internal_error", "enrichment", "error")]
    assert logs[0]["exc_info"] is err


def test_breaker_state_is_one_hot_and_transitions_count() -> None:
    m = Metrics()
    m.set_breaker_state("redis_features", "closed")
    assert value(m, "rung_breaker_state", dependency="redis_features", state="closed") == 1
    assert value(m, "rung_breaker_state", dependency="redis_features", state="open") == 0
    m.ladder_listener.on_breaker_transition("redis_features", "closed", "open")
    m.ladder_listener.on_breaker_transition("redis_features", "open", "half_open")
    states = {
        s: value(m, "rung_breaker_state", dependency="redis_features", state=s)
        for s in ("closed", "open", "half_open", "forced_open", "disabled")
    }
    assert states == {"closed": 0, "open": 0, "half_open": 1, "forced_open": 0, "disabled": 0}
    assert (
        value(m, "rung_breaker_transitions_total", dependency="redis_features",
              from_state="closed", to_state="open")
        == 1
    )  # fmt: skip


def test_event_to_score_latency_bins_a_batch() -> None:
    m = Metrics()
    m.event_to_score_latency(np.array([0.0005, 0.001, 0.049, 0.05, 0.051, 30.0, np.nan]))
    m.event_to_score_latency([0.002])
    m.event_to_score_latency([])
    name = "rung_event_to_score_latency_seconds"
    assert value(m, f"{name}_bucket", le="0.001") == 2  # le is inclusive
    assert value(m, f"{name}_bucket", le="0.0025") == 3
    assert value(m, f"{name}_bucket", le="0.05") == 5
    assert value(m, f"{name}_bucket", le="0.06") == 6
    assert value(m, f"{name}_bucket", le="10.0") == 6
    assert value(m, f"{name}_bucket", le="+Inf") == 7  # NaN dropped
    assert value(m, f"{name}_count") == 7
    assert value(m, f"{name}_sum") == pytest.approx(0.0005 + 0.001 + 0.049 + 0.05 + 0.051 + 30 + 0.002)


def test_latency_buckets_cover_1ms_to_10s() -> None:
    assert LATENCY_BUCKETS_S[0] == 0.001
    assert LATENCY_BUCKETS_S[-1] == 10.0
    assert 0.05 in LATENCY_BUCKETS_S


def test_bulk_histogram_rejects_bad_buckets() -> None:
    with pytest.raises(ValueError):
        BulkHistogram("x", "x", [0.1, 0.1])
    with pytest.raises(ValueError):
        BulkHistogram("x", "x", [])


def test_consumer_lag_set_and_dropped() -> None:
    m = Metrics()
    m.set_consumer_lag("transactions", 0, 120)
    m.set_consumer_lag("transactions", 1, -5)  # clamped: lag is never negative
    m.set_consumer_lag("replays", 0, 7)
    assert value(m, "rung_consumer_lag_records", topic="transactions", partition="0") == 120
    assert value(m, "rung_consumer_lag_records", topic="transactions", partition="1") == 0
    m.drop_consumer_lag([("transactions", 0), ("transactions", 9)])
    assert value(m, "rung_consumer_lag_records", topic="transactions", partition="0") is None
    assert value(m, "rung_consumer_lag_records", topic="replays", partition="0") == 7
    m.drop_consumer_lag()
    assert value(m, "rung_consumer_lag_records", topic="replays", partition="0") is None
    assert value(m, "rung_consumer_lag_records", topic="transactions", partition="1") is None


def test_lag_from_librdkafka_statistics() -> None:
    m = Metrics()
    m.set_consumer_lag("transactions", 2, 50)
    stats = {
        "name": "rung#consumer-1",
        "type": "consumer",
        "topics": {
            "transactions": {
                "partitions": {
                    "0": {"partition": 0, "desired": True, "consumer_lag": 42},
                    "1": {"partition": 1, "desired": True, "consumer_lag": -1},
                    "2": {"partition": 2, "desired": False, "consumer_lag": 3},
                    "-1": {"partition": -1, "consumer_lag": -1},
                }
            }
        },
    }
    m.update_from_librdkafka_stats(orjson.dumps(stats).decode())
    assert value(m, "rung_consumer_lag_records", topic="transactions", partition="0") == 42
    assert value(m, "rung_consumer_lag_records", topic="transactions", partition="1") is None
    assert value(m, "rung_consumer_lag_records", topic="transactions", partition="2") is None
    assert value(m, "rung_consumer_lag_records", topic="transactions", partition="-1") is None
    m.update_from_librdkafka_stats(b'{"type": "producer"}')  # no topics: nothing changes
    assert value(m, "rung_consumer_lag_records", topic="transactions", partition="0") == 42


def test_readiness_needs_partitions_and_no_fatal() -> None:
    m = Metrics()
    assert m.readiness() == (False, "no partitions assigned")
    m.set_assigned_partitions(3)
    assert m.readiness()[0]
    assert value(m, "rung_assigned_partitions") == 3
    m.set_fatal("producer fenced")
    assert m.readiness() == (False, "fatal: producer fenced")
    assert value(m, "rung_fatal") == 1
    m.set_fatal(None)
    assert m.readiness()[0]
    assert value(m, "rung_fatal") == 0
