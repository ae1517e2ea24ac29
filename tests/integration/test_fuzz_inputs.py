"""Bad input over the real broker: hypothesis-generated payloads (invalid UTF-8,
non-JSON, NaN/Infinity literals, wrong types, extreme numbers, missing and extra
fields, deep nesting, 1 MB values, null values, keys and headers) go to a topic, ONE
real worker consumes them all, and every message comes back exactly once: scored,
or dead-lettered with its error and its original bytes. The worker never exits."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

from confluent_kafka import Message, Producer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from stream_app.devstack.process import WorkerProcess
from stream_app.kafka.records import HEADER_ERROR, HEADER_TIER
from tests.integration.workers import wait_for_answers
from tests.unit.stream_app.test_fuzz_decode import payload
from topics.catalog import TopicNames
from topics.codec import (
    MAX_DEAD_LETTER_BYTES,
    DecodeError,
    decode_dead_letter,
    decode_score,
    decode_transaction,
)

N_PAYLOADS = 300
headers_strategy = st.one_of(st.none(), st.lists(st.tuples(
    st.text(max_size=10), st.one_of(st.none(), st.binary(max_size=20))), max_size=3))
key_strategy = st.one_of(st.none(), st.binary(max_size=30))


def generate() -> list[tuple[bytes | None, bytes | None, Any]]:
    """A fixed, derandomized set of (key, value, headers)."""
    out: list[tuple[bytes | None, bytes | None, Any]] = []

    @settings(max_examples=N_PAYLOADS, derandomize=True, database=None,
              phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.integers(0, 10**6).flatmap(payload), key_strategy, headers_strategy)
    def collect(value: bytes | None, key: bytes | None, headers: Any) -> None:
        out.append((key, value, headers))

    collect()
    # A bad record near the broker's size limit: its dead letter must still fit.
    out.append((b"huge-bad", b"\xff" + b"{" * 900_000, None))
    return out


def produce_all(conf: dict[str, Any], topic: str,
                items: list[tuple[bytes | None, bytes | None, Any]]) -> dict[tuple[int, int], int]:
    """Produce every item; returns {(partition, offset): item index}."""
    where: dict[tuple[int, int], int] = {}
    errors: list[str] = []

    def report(i: int) -> Any:
        def on_delivery(err: Any, msg: Message) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                where[(msg.partition() or 0, msg.offset() or 0)] = i
        return on_delivery

    p = Producer({**conf, "message.max.bytes": 2_000_000, "linger.ms": 5})
    for i, (key, value, headers) in enumerate(items):
        p.produce(topic, value=value, key=key, headers=headers, on_delivery=report(i))
        p.poll(0)
    assert p.flush(30) == 0
    assert not errors, errors
    return where


def test_fuzzed_payloads_are_each_scored_or_dead_lettered_and_the_worker_survives(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str,
        topic_names: TopicNames) -> None:
    items = generate()
    assert any(v is None for _, v, _ in items) and any(v and len(v) > 900_000 for _, v, _ in items)
    where = produce_all(kafka_conf, topic_names.transactions, items)
    want_scores: Counter[str] = Counter()
    want_dead: set[tuple[int, int]] = set()
    for pos, i in where.items():
        try:
            want_scores[decode_transaction(items[i][1]).transaction_id] += 1
        except DecodeError:
            want_dead.add(pos)
    assert want_scores and want_dead
    worker = WorkerProcess(kafka_conf["bootstrap.servers"], redis_url, prefix)
    try:
        worker.wait_ready()
        scores, dead = wait_for_answers(kafka_conf, topic_names, len(items), timeout_s=45)
        assert worker.proc.poll() is None, f"worker died: {worker.stderr()}"
    finally:
        code = worker.terminate()
    assert code == 0
    got_scores = Counter(decode_score(r.value or b"").transaction_id for r in scores)
    assert got_scores == want_scores
    for rec in scores:
        s = decode_score(rec.value or b"")
        assert rec.headers[HEADER_TIER] == s.tier.encode() and 0.0 <= s.score <= 1.0
        if s.tier not in ("primary", "cache"):
            assert s.reasons
    letters = {(dl.source_partition, dl.source_offset): dl
               for dl in (decode_dead_letter(r.value or b"") for r in dead)}
    assert len(letters) == len(dead) and set(letters) == want_dead
    for pos, dl in letters.items():
        key, value, _ = items[where[pos]]
        assert dl.error and dl.original_key == key
        if dl.truncated:  # kept whole up to the cap, and identified past it
            assert value is not None and dl.original_value == value[:MAX_DEAD_LETTER_BYTES]
            assert dl.original_value_length == len(value)
            assert dl.original_value_sha256 == hashlib.sha256(value).hexdigest()
        else:
            assert dl.original_value == value
    assert all(r.headers.get(HEADER_ERROR) for r in dead)
