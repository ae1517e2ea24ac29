"""Load generation at the Kafka edge, without a broker: synthetic events, the bulk producer."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from stream_app.devstack import produce
from stream_app.devstack.produce import THROUGHPUT_CONFIG, produce_bulk, synthetic_events
from topics.codec import decode_transaction, encode_transaction


def test_synthetic_events_defaults_unchanged() -> None:
    txs = list(synthetic_events(3000))
    assert txs[5].customer_id == "c5" and txs[5].terminal_id == "t5"
    assert txs[2000].customer_id == f"c{2000 % 977}" and txs[2000].terminal_id == "t1"
    assert len({t.customer_id for t in txs}) == 977
    assert all(decode_transaction(encode_transaction(t)).transaction_id == t.transaction_id
               for t in txs[:50])


def test_synthetic_events_with_cardinality_and_skew() -> None:
    kw: dict[str, Any] = {"customers": 50_000, "terminals": 5_000, "skew": 1.0, "seed": 4}
    a = list(synthetic_events(20_000, **kw))
    b = list(synthetic_events(20_000, **kw))
    assert [t.customer_id for t in a] == [t.customer_id for t in b]
    counts = Counter(t.customer_id for t in a)
    assert len(counts) > 5_000
    top = sum(c for _, c in counts.most_common(500))  # top 1% of the 50,000
    assert top / len(a) > 0.2
    assert len({t.terminal_id for t in a}) <= 5_000


class _FakeProducer:
    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.full_once = True

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        if self.full_once and len(self.sent) == 7:
            self.full_once = False
            raise BufferError("queue full")
        self.sent.append((topic, key, value))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def test_produce_bulk_sends_every_record_with_broken_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[_FakeProducer] = []

    def factory(conf: dict[str, Any]) -> _FakeProducer:
        made.append(_FakeProducer(conf))
        return made[-1]

    monkeypatch.setattr(produce, "Producer", factory)
    stamps: list[float] = []

    def encode(lo: int, hi: int, stamp: float) -> tuple[list[bytes], list[bytes]]:
        stamps.append(stamp)
        return [f"k-{i}".encode() for i in range(lo, hi)], [b"{}" for _ in range(lo, hi)]

    labels = {f"k-{i}": i % 2 == 0 for i in range(95)}
    report = produce_bulk({"bootstrap.servers": "x"}, "t", 95, encode, chunk=10, bad_every=30,
                          labels=labels)
    assert made[0].conf["compression.type"] == THROUGHPUT_CONFIG["compression.type"] == "lz4"
    assert report.sent == 95 and len(made[0].sent) == 95 and len(stamps) == 10
    assert report.bad == 3 and report.bad_keys == [b"bad-30", b"bad-60", b"bad-90"]
    assert len(report.ids) == 92 and "k-30" not in report.ids
    assert report.labels == {i: labels[i] for i in report.ids}
