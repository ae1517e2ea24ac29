"""Process and infrastructure faults over the real stack: SIGKILL storms, a paused
broker, Redis stopped and restarted while scoring, and rebalance storms. After each:
every input id exactly once among committed scores + dead letters."""

from __future__ import annotations

import random
import signal
import time
from typing import Any

import pytest

from stream_app.devstack.process import WorkerProcess
from stream_app.devstack.stack import LocalStack
from tests.chaos.harness import (
    Background,
    Outcome,
    Results,
    aborted_records,
    breaker_state,
    chaos_worker,
    command_for,
    produce,
    settle,
    tiers_of,
    transitions,
    wait_until,
)
from topics.catalog import TopicNames

pytestmark = pytest.mark.chaos


def record(results: Results, scenario: str, fault: str, keys: list[bytes], scores: list[Any],
           dead: list[Any], missing: int, dups: int, test: str, **notes: Any) -> None:
    results.add(Outcome(scenario=scenario, fault=fault, sent=len(keys), scored=len(scores),
                        dead_lettered=len(dead), lost=missing, duplicated=dups,
                        tiers=dict(tiers_of(scores)), command=command_for(test), notes=notes))


def test_sigkill_storm(kafka_conf: dict[str, Any], redis_url: str, prefix: str,
                       topic_names: TopicNames, results: Results) -> None:
    """10 SIGKILLs at random moments over a stream, two worker slots restarted at once
    with their stable transactional ids (a kill that lands between produce and commit
    leaves an open transaction that the successor aborts: counted as aborted records)."""
    sigkill_storm(kafka_conf, redis_url, prefix, topic_names, results, kills=10,
                  n=40_000, test="test_sigkill_storm")


@pytest.mark.ci_chaos
def test_sigkill_x3(kafka_conf: dict[str, Any], redis_url: str, prefix: str,
                    topic_names: TopicNames, results: Results) -> None:
    """The CI variant: 3 SIGKILLs, with more room between them, over 10,000 events."""
    sigkill_storm(kafka_conf, redis_url, prefix, topic_names, results, kills=3,
                  n=10_000, test="test_sigkill_x3", gap_s=(1.5, 2.5), rate=1_000)


def sigkill_storm(kafka_conf: dict[str, Any], redis_url: str, prefix: str,
                  topic_names: TopicNames, results: Results, *, kills: int, n: int,
                  test: str, gap_s: tuple[float, float] = (0.8, 2.0),
                  rate: float = 2_000) -> None:
    planned = kills
    rng = random.Random(8)
    slots = [chaos_worker(kafka_conf, redis_url, prefix, slot=i) for i in range(2)]
    kills = 0
    try:
        for w in slots:
            w.wait_ready()
        stream = Background(kafka_conf, topic_names, n, "kill-", rate=rate)
        for _ in range(planned):
            time.sleep(rng.uniform(*gap_s))
            i = rng.randrange(2)
            slots[i].kill()  # SIGKILL
            kills += 1
            slots[i] = chaos_worker(kafka_conf, redis_url, prefix, slot=i)
        keys = stream.join()
        for w in slots:
            w.wait_ready()
        scores, dead, missing, dups = settle(kafka_conf, topic_names, keys, timeout_s=180)
        aborted = aborted_records(kafka_conf, topic_names.scores)
    finally:
        for w in slots:
            w.kill()
    record(results, "process", f"SIGKILL x{kills} (random moments, 2 workers)", keys, scores,
           dead, missing, dups, test, kills=kills,
           aborted_records_from_killed_transactions=aborted)
    assert len(keys) == n
    assert (missing, dups) == (0, 0)


def test_broker_paused_mid_stream(stack: LocalStack, kafka_conf: dict[str, Any],
                                  redis_url: str, prefix: str, topic_names: TopicNames,
                                  results: Results) -> None:
    """SIGSTOP the broker for 8 s while records stream in, then SIGCONT."""
    worker = chaos_worker(kafka_conf, redis_url, prefix)
    try:
        worker.wait_ready()
        keys = produce(kafka_conf, topic_names, 5_000, "pause-a-", rate=2_500)
        stack.signal_kafka(signal.SIGSTOP)
        try:
            time.sleep(8.0)
        finally:
            stack.signal_kafka(signal.SIGCONT)
        keys += produce(kafka_conf, topic_names, 5_000, "pause-b-", rate=2_500)
        scores, dead, missing, dups = settle(kafka_conf, topic_names, keys, timeout_s=120)
        alive = worker.proc.poll() is None
    finally:
        worker.kill()
    record(results, "infrastructure", "Kafka broker paused 8 s (SIGSTOP/SIGCONT)", keys, scores,
           dead, missing, dups, "test_broker_paused_mid_stream", worker_survived=alive)
    assert (missing, dups) == (0, 0)


def test_broker_restarted_mid_stream(stack: LocalStack, kafka_conf: dict[str, Any],
                                     redis_url: str, prefix: str, topic_names: TopicNames,
                                     results: Results) -> None:
    """Stop the broker gracefully and start it again while records stream in. A worker
    that hits a fatal producer error exits non-zero; like a supervisor, the test starts
    a successor with the same transactional id, which fences and aborts what was open."""
    worker = chaos_worker(kafka_conf, redis_url, prefix, slot=0)
    restarts = 0
    try:
        worker.wait_ready()
        stream = Background(kafka_conf, topic_names, 10_000, "restart-", rate=1_000)
        time.sleep(3.0)
        stack.restart_kafka()
        keys = stream.join()
        end = time.monotonic() + 180
        while True:
            if worker.proc.poll() is not None:  # the supervisor's job
                restarts += 1
                worker = chaos_worker(kafka_conf, redis_url, prefix, slot=0)
                worker.wait_ready()
            scores, dead, missing, dups = settle(kafka_conf, topic_names, keys, timeout_s=5)
            if missing == 0 or time.monotonic() > end:
                break
    finally:
        worker.kill()
    record(results, "infrastructure", "Kafka broker restarted mid-stream", keys, scores,
           dead, missing, dups, "test_broker_restarted_mid_stream", worker_restarts=restarts)
    assert (missing, dups) == (0, 0)


@pytest.mark.ci_chaos
def test_redis_stopped_and_restarted(stack: LocalStack, kafka_conf: dict[str, Any],
                                     redis_url: str, prefix: str, topic_names: TopicNames,
                                     results: Results) -> None:
    """Redis goes away while scoring: the cache misses, the primary loses its features,
    records fall to the fallback; nothing is lost; the breakers close once it is back."""
    worker = chaos_worker(kafka_conf, redis_url, prefix)
    try:
        worker.wait_ready()
        keys = produce(kafka_conf, topic_names, 2_000, "redis-before-", rate=2_000)
        settle(kafka_conf, topic_names, keys)
        stack.stop_redis()
        try:
            down = produce(kafka_conf, topic_names, 3_000, "redis-down-", rate=1_500)
            keys += down
            settle(kafka_conf, topic_names, keys)
            opened = transitions(worker, "feature_store")[("closed", "open")]
        finally:
            stack.start_redis()
        after: list[bytes] = []

        def redis_closed() -> bool:
            return all(breaker_state(worker, d) == "closed" for d in ("cache", "feature_store"))

        def primary_again() -> bool:
            # keep probing until the breakers are closed too: an open breaker tries
            # again only on a call after its backoff, so without traffic it stays open
            probe = produce(kafka_conf, topic_names, 200, f"redis-after{len(after)}-")
            after.extend(probe)
            got = settle(kafka_conf, topic_names, probe, timeout_s=30)[0]
            return tiers_of(got)["primary"] > 0 and redis_closed()

        recovered = wait_until(primary_again, 120, every_s=1.0)
        closed = redis_closed()
        keys += after
        scores, dead, missing, dups = settle(kafka_conf, topic_names, keys)
    finally:
        worker.kill()
    during = tiers_of(scores, "redis-down-")
    record(results, "infrastructure", "Redis stopped, then restarted, while scoring", keys,
           scores, dead, missing, dups, "test_redis_stopped_and_restarted",
           tiers_while_down=dict(during), feature_store_breaker_opened=opened,
           recovered_to_primary=recovered, breakers_closed_after=closed)
    assert (missing, dups) == (0, 0)
    assert during["primary"] == 0 and during["fallback"] > 0, during
    assert opened >= 1 and recovered and closed


def test_rebalance_storm(kafka_conf: dict[str, Any], redis_url: str, prefix: str,
                         topic_names: TopicNames, results: Results) -> None:
    """Workers join and leave (SIGTERM) every ~1.5 s while the stream runs."""
    rng = random.Random(3)
    pool: list[WorkerProcess] = [chaos_worker(kafka_conf, redis_url, prefix, slot=0)]
    changes, next_slot = 0, 1
    try:
        pool[0].wait_ready()
        stream = Background(kafka_conf, topic_names, 30_000, "storm-", rate=2_000)
        for step in range(8):
            time.sleep(rng.uniform(1.0, 2.0))
            if len(pool) < 2 or (len(pool) < 4 and step % 3 != 2):
                pool.append(chaos_worker(kafka_conf, redis_url, prefix, slot=next_slot))
                next_slot += 1
            else:
                pool.pop(rng.randrange(len(pool))).terminate()
            changes += 1
        keys = stream.join()
        scores, dead, missing, dups = settle(kafka_conf, topic_names, keys, timeout_s=180)
    finally:
        for w in pool:
            w.kill()
    record(results, "process", f"rebalance storm: {changes} joins/leaves, up to 4 workers",
           keys, scores, dead, missing, dups, "test_rebalance_storm", membership_changes=changes)
    assert (missing, dups) == (0, 0)
