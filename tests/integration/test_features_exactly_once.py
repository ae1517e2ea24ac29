"""Exactly-once online features on the real stack: a worker scores events over six
partitions, is SIGKILLed mid-run, a successor finishes; then every ring in Redis must
equal the one recomputed from the committed topic (plain merges over the same events
and fraud labels, order-independent), and the labels' terminal fraud counts too."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import numpy as np
import pytest
import redis

from scorers.feature_store import RedisFeatureStore
from stream_app.devstack.process import WorkerProcess
from stream_app.devstack.produce import produce_events, produce_labels
from stream_app.kafka.readback import read_topic
from tests.integration.workers import exactly_once_report, simple_events, wait_for_answers
from topics.catalog import TopicNames
from topics.codec import decode_transaction
from topics.schemas import Label, LabelKind, Transaction

pytestmark = pytest.mark.integration


def _rings(client: redis.Redis, prefix: str, entities: set[str]) -> dict[str, bytes | None]:
    keys = sorted(entities)
    return dict(zip(keys, client.mget([f"{prefix}:ring:{k}" for k in keys]), strict=True))


def _wait_for_watermarks(client: redis.Redis, names: TopicNames, ends: dict[int, int],
                         topic: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        marks = client.mget([f"rung:fs:applied:{topic}:{p}" for p in sorted(ends)])
        if all(m is not None and int(m) >= ends[p]
               for p, m in zip(sorted(ends), marks, strict=True)):
            return
        time.sleep(0.5)


def test_features_are_applied_exactly_once_across_a_sigkill(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str,
        topic_names: TopicNames) -> None:
    n = 12_000
    events = [dataclasses.replace(t, customer_id=f"{prefix}-{t.customer_id}",
                                  terminal_id=f"{prefix}-{t.terminal_id}")
              for t in simple_events(n, prefix, customers=300, terminals=200, skew=1.0)]
    keys: list[bytes] = []
    first = WorkerProcess(kafka_conf["bootstrap.servers"], redis_url, prefix)
    second: WorkerProcess | None = None
    try:
        first.wait_ready()
        producer = threading.Thread(target=lambda: keys.extend(i.encode() for i in produce_events(
            kafka_conf, topic_names.transactions, events, rate_per_s=4_000,
            max_events=n, bad_every=997).ids))
        producer.start()
        time.sleep(1.5)
        first.proc.kill()  # mid-run: committed batches may not be applied yet
        second = WorkerProcess(kafka_conf["bootstrap.servers"], redis_url, prefix)
        second.wait_ready()
        producer.join()
        scores, dead = wait_for_answers(kafka_conf, topic_names, n, timeout_s=120)
        assert exactly_once_report(keys, scores, dead)[1] == 0
        records = read_topic(kafka_conf, topic_names.transactions)
        client = redis.Redis.from_url(redis_url)
        ends = {p: max(r.offset for r in records if r.partition == p) + 1
                for p in {r.partition for r in records}}
        _wait_for_watermarks(client, topic_names, ends, topic_names.transactions)
        txs: list[Transaction] = []
        for r in sorted(records, key=lambda r: (r.partition, r.offset)):
            try:
                txs.append(decode_transaction(r.value))
            except ValueError:
                continue
        rng = np.random.default_rng(1)
        frauds = [t for t in txs if rng.random() < 0.05]
        labels = [Label(t.transaction_id, LabelKind.FRAUD, time.time(), t.terminal_id,
                        t.event_time_s) for t in frauds]
        labels += [Label(t.transaction_id, LabelKind.GENUINE, time.time(), t.terminal_id,
                         t.event_time_s) for t in txs[:50]]
        produce_labels(kafka_conf, topic_names.labels, labels)
        label_records = read_topic(kafka_conf, topic_names.labels)
        label_ends = {p: max(r.offset for r in label_records if r.partition == p) + 1
                      for p in {r.partition for r in label_records}}
        _wait_for_watermarks(client, topic_names, label_ends, topic_names.labels)
    finally:
        first.kill()
        if second is not None:
            second.terminate()
    expected = RedisFeatureStore(client, prefix=f"{prefix}:expected")
    expected.update(txs, 10.0)
    expected.record_labels(frauds, [True] * len(frauds), 10.0)
    entities = {f"c:{t.customer_id}" for t in txs} | {f"t:{t.terminal_id}" for t in txs}
    live = _rings(client, "rung:fs", entities)
    want = _rings(client, f"{prefix}:expected", entities)
    mismatches = sorted(k for k in entities if live[k] != want[k])
    assert mismatches == []
