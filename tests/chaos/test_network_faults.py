"""Network faults through a real TCP proxy (Toxiproxy, `LocalStack(faults=True)`).

Each scenario starts a worker whose every Kafka connection (bootstrap, partition
leader, group and transaction coordinators: the broker advertises the proxy) and every
Redis connection go through Toxiproxy; the producer and the read_committed read-back go
to the services directly, so only the worker sees the fault. The fault is switched on
while records stream in, held, then healed; every input id must end up exactly once
among committed scores + dead letters, and the primary must answer again afterwards.

A worker that exits (a fatal client error, or the stall watchdog's exit 3) is restarted
with the same transactional id, as its supervisor would: the restarts are recorded.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from stream_app.devstack.process import WorkerProcess
from stream_app.devstack.stack import KAFKA_PROXY, REDIS_PROXY
from stream_app.devstack.toxiproxy import ToxiproxyClient
from tests.chaos.harness import (
    Background,
    Outcome,
    Results,
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

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

DEPENDENCIES = ("primary", "fallback", "cache", "feature_store")
BOTH = ("downstream", "upstream")


class Supervised:
    """One worker slot through the proxies, restarted when its process exits."""

    def __init__(self, conf: dict[str, Any], redis_url: str, prefix: str) -> None:
        self.conf, self.redis_url, self.prefix = conf, redis_url, prefix
        self.exits: list[int] = []
        self.worker = self._start()
        self.worker.wait_ready(timeout_s=120)

    def _start(self) -> WorkerProcess:
        return chaos_worker(self.conf, self.redis_url, self.prefix, slot=0)

    def check(self) -> None:
        code = self.worker.proc.poll()
        if code is not None:
            self.exits.append(code)
            self.worker = self._start()

    def kill(self) -> None:
        self.worker.kill()


def transitions_all(worker: WorkerProcess) -> dict[str, Counter[tuple[str, str]]]:
    try:
        return {d: transitions(worker, d) for d in DEPENDENCIES}
    except OSError:
        return {d: Counter() for d in DEPENDENCIES}


def opened_between(before: dict[str, Counter[tuple[str, str]]],
                   after: dict[str, Counter[tuple[str, str]]]) -> dict[str, int]:
    out = {}
    for d in DEPENDENCIES:
        n = sum(after[d][k] - before[d].get(k, 0) for k in after[d] if k[1] == "open")
        if n:
            out[d] = n
    return out


def supervised_settle(slot: Supervised, conf: dict[str, Any], names: TopicNames,
                      keys: list[bytes], timeout_s: float) -> tuple[Any, Any, int, int]:
    end = time.monotonic() + timeout_s
    while True:
        slot.check()
        scores, dead, missing, dups = settle(conf, names, keys, timeout_s=5)
        if missing == 0 or time.monotonic() > end:
            return scores, dead, missing, dups


def run_scenario(*, test: str, fault: str, toxiproxy: ToxiproxyClient,
                 inject: Callable[[], object], proxied_kafka_conf: dict[str, Any],
                 proxied_redis_url: str, kafka_conf: dict[str, Any], prefix: str,
                 names: TopicNames, results: Results, n: int, rate: float,
                 hold_s: float | None = None, start_after_s: float = 0.0,
                 settle_while_on_s: float = 0.0, drain_s: float = 240.0) -> dict[str, Any]:
    """Stream `n` records at `rate` (direct to the broker); `inject` the fault after
    `start_after_s`; heal (`toxiproxy.reset()`) after `hold_s` (None: once the stream is
    sent, after waiting up to `settle_while_on_s` for its answers with the fault on);
    then wait for every answer and for the primary and closed breakers again."""
    slot = Supervised(proxied_kafka_conf, proxied_redis_url, prefix)
    tag = test.removeprefix("test_")
    keys: list[bytes] = []
    try:
        keys += produce(kafka_conf, names, 100, f"{tag}-pre-")
        assert supervised_settle(slot, kafka_conf, names, keys, 90)[2] == 0, "not healthy"
        before = transitions_all(slot.worker)
        stream = Background(kafka_conf, names, n, f"{tag}-on-", rate=rate)
        time.sleep(start_after_s)
        injected_at = time.monotonic()
        inject()
        try:
            if hold_s is not None:
                time.sleep(hold_s)
                stream_keys = stream.join()
            else:
                stream_keys = stream.join()
                wait_until(lambda: settle(kafka_conf, names, stream_keys, timeout_s=1)[2] == 0,
                           settle_while_on_s, every_s=1.0)
            answered_while_on = n - settle(kafka_conf, names, stream_keys, timeout_s=1)[2]
            during = tiers_of(settle(kafka_conf, names, stream_keys, timeout_s=1)[0])
            slot.check()
            mid = transitions_all(slot.worker)
        finally:
            toxiproxy.reset()
        held_s = time.monotonic() - injected_at
        keys += stream_keys
        healed_at = time.monotonic()
        scores, dead, missing, dups = supervised_settle(slot, kafka_conf, names, keys, drain_s)
        drained_s = time.monotonic() - healed_at
        probes: list[bytes] = []

        def all_closed() -> bool:
            return all(breaker_state(slot.worker, d) == "closed" for d in DEPENDENCIES)

        def primary_again() -> bool:
            # probe until the primary answers and every breaker is closed again (an
            # open breaker tries again only after its backoff, on a call)
            slot.check()
            probe = produce(kafka_conf, names, 100, f"{tag}-after{len(probes)}-")
            probes.extend(probe)
            got = settle(kafka_conf, names, probe, timeout_s=30)[0]
            return tiers_of(got)["primary"] > 0 and all_closed()

        recovered = wait_until(primary_again, 150, every_s=1.0)
        closed = all_closed()
        keys += probes
        scores, dead, missing, dups = supervised_settle(slot, kafka_conf, names, keys, 120)
        after = transitions_all(slot.worker)
    finally:
        slot.kill()
    on = tiers_of(scores, f"{tag}-on-")
    notes = {"tiers_of_records_sent_during_fault": dict(on),
             "answered_before_heal": answered_while_on,
             "fault_held_s": round(held_s, 1), "all_answered_s_after_heal": round(drained_s, 1),
             "breaker_opened_during_fault": opened_between(before, mid),
             "breaker_opened_total": opened_between(before, after),
             "worker_exits": slot.exits, "recovered_to_primary": recovered,
             "breakers_closed_after": closed}
    results.add(Outcome(scenario="network (Toxiproxy)", fault=fault, sent=len(keys),
                        scored=len(scores), dead_lettered=len(dead), lost=missing,
                        duplicated=dups, tiers=dict(tiers_of(scores)),
                        command=command_for(test), notes=notes))
    assert (missing, dups) == (0, 0), notes
    assert recovered and closed, notes
    assert sum(on.values()) == n
    return {"during": during, **notes}


@pytest.fixture
def net(toxiproxy: ToxiproxyClient, proxied_kafka_conf: dict[str, Any],
        proxied_redis_url: str, kafka_conf: dict[str, Any], prefix: str,
        topic_names: TopicNames, results: Results) -> dict[str, Any]:
    return {"toxiproxy": toxiproxy, "proxied_kafka_conf": proxied_kafka_conf,
            "proxied_redis_url": proxied_redis_url, "kafka_conf": kafka_conf,
            "prefix": prefix, "names": topic_names, "results": results}


@pytest.mark.ci_chaos
def test_kafka_latency_200ms(net: dict[str, Any], toxiproxy: ToxiproxyClient) -> None:
    """200 ms added to every broker → worker response (each transaction's round trips)."""
    out = run_scenario(test="test_kafka_latency_200ms",
                       fault="Kafka link +200 ms latency (all worker connections)",
                       inject=lambda: toxiproxy.latency(KAFKA_PROXY, 200),
                       n=1500, rate=150, settle_while_on_s=150, **net)
    assert out["answered_before_heal"] == 1500, out  # it keeps scoring through the latency


def test_kafka_bandwidth_throttled(net: dict[str, Any], toxiproxy: ToxiproxyClient) -> None:
    """The worker's broker link throttled to 32 KB/s each way."""
    def inject() -> None:
        for s in BOTH:
            toxiproxy.bandwidth(KAFKA_PROXY, 32, stream=s)

    run_scenario(test="test_kafka_bandwidth_throttled",
                 fault="Kafka link throttled to 32 KB/s each way", inject=inject,
                 n=1500, rate=150, settle_while_on_s=150, **net)


def test_kafka_reset_mid_transaction(net: dict[str, Any], toxiproxy: ToxiproxyClient) -> None:
    """Every worker ↔ broker connection reset (TCP RST) on its next data, 4 times, 1 s each,
    while transactions are open."""
    def inject() -> None:
        for i in range(4):
            if i:
                time.sleep(2.0)
            toxiproxy.reset_peer(KAFKA_PROXY, 0)
            time.sleep(1.0)
            toxiproxy.remove_toxic(KAFKA_PROXY, "reset_peer_downstream")

    out = run_scenario(test="test_kafka_reset_mid_transaction",
                       fault="Kafka connections reset (RST) x4 mid-transaction", inject=inject,
                       n=3000, rate=300, start_after_s=2.0, hold_s=0.0, **net)
    # Every connection reset at once makes librdkafka re-bootstrap; with re-bootstrap on,
    # the next send_offsets_to_transaction hung and the stall watchdog exited (exit 3).
    # Transactional producers no longer re-bootstrap (stream_app.kafka.clients).
    assert out["worker_exits"] == [], out


@pytest.mark.timeout(900)
def test_kafka_partition_20s(net: dict[str, Any], toxiproxy: ToxiproxyClient) -> None:
    """The worker's broker link black-holed both ways for 20 s (`timeout` toxic: data
    dropped, connections held open), then healed."""
    def inject() -> None:
        for s in BOTH:
            toxiproxy.timeout(KAFKA_PROXY, 0, stream=s)

    run_scenario(test="test_kafka_partition_20s",
                 fault="Kafka partition 20 s (timeout toxic both ways), then heal",
                 inject=inject, n=3000, rate=300, start_after_s=3.0, hold_s=20.0,
                 drain_s=400.0, **net)


def test_redis_latency_200ms(net: dict[str, Any], toxiproxy: ToxiproxyClient) -> None:
    """200 ms on every Redis reply: beyond the feature-store budget."""
    out = run_scenario(test="test_redis_latency_200ms", fault="Redis +200 ms latency",
                       inject=lambda: toxiproxy.latency(REDIS_PROXY, 200),
                       n=2000, rate=500, settle_while_on_s=150, **net)
    assert out["during"]["primary"] == 0, out


def test_redis_reset(net: dict[str, Any], toxiproxy: ToxiproxyClient) -> None:
    """Every Redis connection reset (TCP RST) on its next data while records stream in."""
    out = run_scenario(test="test_redis_reset", fault="Redis connections reset (RST)",
                       inject=lambda: toxiproxy.reset_peer(REDIS_PROXY, 0),
                       n=2000, rate=500, settle_while_on_s=150, **net)
    assert out["during"]["primary"] == 0, out
