"""The confluent-kafka worker against the real local broker and Redis."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson

from stream_app.devstack.process import WorkerProcess
from stream_app.devstack.produce import produce_events
from stream_app.kafka.records import HEADER_MODEL_VERSION, HEADER_TIER, needs_review
from tests.integration.workers import exactly_once_report, simple_events, wait_for_answers
from topics.catalog import TopicNames
from topics.codec import decode_dead_letter, decode_score


def _produce(conf: dict[str, Any], names: TopicNames, n: int, *, rate: float = 0.0,
             bad_every: int = 0, prefix: str = "tx") -> list[bytes]:
    report = produce_events(conf, names.transactions, simple_events(n, prefix), rate_per_s=rate,
                            max_events=n, bad_every=bad_every)
    return [i.encode() for i in report.ids] + report.bad_keys


def test_50k_events_give_exactly_50k_answers_and_route_reviews(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str,
        topic_names: TopicNames) -> None:
    n = 50_000
    keys = _produce(kafka_conf, topic_names, n, bad_every=5_000)
    worker = WorkerProcess(kafka_conf["bootstrap.servers"], redis_url, prefix)
    try:
        worker.wait_ready()
        scores, dead = wait_for_answers(kafka_conf, topic_names, n)
        metrics = worker.metrics_text()
    finally:
        assert worker.terminate() == 0
    assert len(keys) == n
    assert exactly_once_report(keys, scores, dead) == (0, 0)
    assert len(scores) + len(dead) == n and len(dead) == 9
    for rec in scores[:2000]:
        score = decode_score(rec.value or b"")
        assert rec.key == score.transaction_id.encode()
        assert rec.headers[HEADER_TIER] == score.tier.encode()
        assert rec.headers[HEADER_MODEL_VERSION] == score.model_version.encode()
    # Review routing, record by record: exactly the scores that need a human.
    from stream_app.kafka.readback import read_topic

    review = read_topic(kafka_conf, topic_names.review)
    want = sorted(r.key for r in scores if needs_review(decode_score(r.value or b"")))
    assert sorted(r.key for r in review) == want and want
    assert "rung_records_in_total" in metrics


def test_undecodable_records_go_to_dead_letter_with_their_errors(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str,
        topic_names: TopicNames) -> None:
    from confluent_kafka import Producer

    bad = {b"k-notjson": b"\xff\xfe not json", b"k-trunc": b'{"transaction_id": "x", "amo',
           b"k-array": b"[1,2,3]", b"k-noid": orjson.dumps({"amount": 3})}
    p = Producer(kafka_conf)
    for key, value in bad.items():
        p.produce(topic_names.transactions, key=key, value=value)
    good = list(simple_events(100, prefix="good"))
    produce_events(kafka_conf, topic_names.transactions, good, rate_per_s=0)
    p.flush(10)
    worker = WorkerProcess(kafka_conf["bootstrap.servers"], redis_url, prefix)
    try:
        worker.wait_ready()
        scores, dead = wait_for_answers(kafka_conf, topic_names, 104)
    finally:
        worker.terminate()
    assert len(scores) == 100
    letters = {dl.original_key: dl for dl in (decode_dead_letter(r.value or b"") for r in dead)}
    assert set(letters) == set(bad)
    for key, dl in letters.items():
        assert dl.original_value == bad[key]
        assert dl.source_topic == topic_names.transactions and dl.source_offset >= 0
    assert "not valid JSON" in letters[b"k-notjson"].error
    assert "not valid JSON" in letters[b"k-trunc"].error
    assert "JSON object" in letters[b"k-array"].error
    assert "transaction_id" in letters[b"k-noid"].error


def test_sigkill_one_of_three_workers_mid_stream_loses_and_duplicates_nothing(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str,
        topic_names: TopicNames) -> None:
    n = 30_000
    keys: list[bytes] = []
    workers = [WorkerProcess(kafka_conf["bootstrap.servers"], redis_url, prefix) for _ in range(3)]
    try:
        for w in workers:
            w.wait_ready()
        producer = threading.Thread(target=lambda: keys.extend(
            _produce(kafka_conf, topic_names, n, rate=6_000)))
        producer.start()
        time.sleep(2.5)  # mid-stream: the producer is still writing
        workers[0].proc.kill()
        producer.join()
        scores, dead = wait_for_answers(kafka_conf, topic_names, n, timeout_s=180)
    finally:
        for w in workers[1:]:
            w.terminate()
        workers[0].kill()
    assert len(keys) == n
    assert exactly_once_report(keys, scores, dead) == (0, 0)
    assert len(scores) + len(dead) == n


def test_sigterm_mid_batch_exits_in_bound_and_a_successor_finishes_exactly(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str,
        topic_names: TopicNames) -> None:
    n = 20_000
    keys = _produce(kafka_conf, topic_names, n)
    first = WorkerProcess(kafka_conf["bootstrap.servers"], redis_url, prefix)
    first.wait_ready()
    time.sleep(0.5)  # it is scoring
    t0 = time.monotonic()
    code = first.terminate(timeout_s=30)
    stopped_in = time.monotonic() - t0
    assert code == 0
    assert stopped_in < 10.0, f"shutdown took {stopped_in:.1f}s, bound is 10s"
    second = WorkerProcess(kafka_conf["bootstrap.servers"], redis_url, prefix)
    try:
        second.wait_ready()
        scores, dead = wait_for_answers(kafka_conf, topic_names, n)
    finally:
        second.terminate()
    assert exactly_once_report(keys, scores, dead) == (0, 0)
    assert len(scores) + len(dead) == n
