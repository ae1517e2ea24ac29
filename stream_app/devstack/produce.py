"""Producing transaction events: the demo's load generator.

Events come from the simulator in event-time order and are stamped with the
wall-clock time at which they are produced, so event-to-score latency is real.
A small, chosen fraction of records is deliberately broken (not JSON, truncated
JSON) to exercise the dead-letter path.

Two paths: `produce_events` paces `Transaction`s at a steady rate; `produce_bulk`
sends pre-encoded chunks as fast as a throughput-configured producer takes them
(the load generator: `benchmarks/loadgen.py`, `rung produce-demo --rate 0`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson
import structlog
from confluent_kafka import Producer

from topics.codec import transaction_to_dict
from topics.schemas import Transaction

log = structlog.get_logger(__name__)


@dataclass
class ProduceReport:
    sent: int = 0
    bad: int = 0
    ids: list[str] = field(default_factory=list)  # transaction ids of the good records
    bad_keys: list[bytes] = field(default_factory=list)
    seconds: float = 0.0
    labels: dict[str, bool] = field(default_factory=dict)


_MCCS = ("5411", "5812", "7995", "6051", "5999")
_CHANNELS = ("pos", "ecom", "mobile", "atm")


def synthetic_events(n: int, prefix: str = "tx", start: int = 0, *, customers: int = 977,
                     terminals: int = 1999, skew: float = 0.0,
                     seed: int = 0) -> Iterator[Transaction]:
    """Valid, varied transactions without the simulator (tests, benchmarks, smoke loads);
    ids `<prefix>-<i>` are unique per prefix, so the prediction cache misses.

    With `skew == 0` event i goes to customer `i % customers` and terminal
    `i % terminals` (every entity equally hot); with `skew > 0` entities are drawn
    (by `seed`) with Zipf weights `rank ** -skew`: a few hot ones and a long tail.
    """
    cust: list[int] | range = range(start, start + n)
    term: list[int] | range = cust
    if skew > 0:
        rng = np.random.default_rng(seed)
        cust = _zipf_draws(rng, customers, skew, n)
        term = _zipf_draws(rng, terminals, skew, n)
    for k, i in enumerate(range(start, start + n)):
        yield Transaction(
            transaction_id=f"{prefix}-{i}", event_time_s=time.time(),
            customer_id=f"c{cust[k] % customers}", terminal_id=f"t{term[k] % terminals}",
            amount=float(5 + (i * 37) % 400), currency="EUR",
            merchant_category=_MCCS[i % len(_MCCS)], is_international=i % 11 == 0,
            has_international_history=i % 3 == 0, account_age_days=(i * 13) % 3000,
            channel=_CHANNELS[i % len(_CHANNELS)])


def _zipf_draws(rng: np.random.Generator, n_items: int, skew: float, n: int) -> list[int]:
    weight = np.asarray(rng.permutation(n_items) + 1, dtype=np.float64) ** -skew
    return [int(x) for x in rng.choice(n_items, size=n, p=weight / weight.sum())]


def broken_payload(i: int) -> bytes:
    """Deterministic bad records: alternately not JSON and truncated JSON."""
    if i % 2 == 0:
        return b"\xff\xfenot json at all"
    return b'{"transaction_id": "broken-' + str(i).encode() + b'", "amount": 12'


def produce_events(conf: dict[str, Any], topic: str, events: Iterable[Transaction], *,
                   rate_per_s: float, duration_s: float | None = None,
                   max_events: int | None = None, bad_every: int = 0,
                   labels: dict[str, bool] | None = None) -> ProduceReport:
    """Produce events at a steady rate until the duration or count is reached."""
    producer = Producer({**conf, "linger.ms": 5, "enable.idempotence": True, "acks": "all"})
    report = ProduceReport()
    start = time.monotonic()
    interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
    for tx in events:
        if max_events is not None and report.sent >= max_events:
            break
        elapsed = time.monotonic() - start
        if duration_s is not None and elapsed >= duration_s:
            break
        ahead = report.sent * interval - elapsed
        if ahead > 0.002:
            producer.poll(0)
            time.sleep(ahead)
        if bad_every and report.sent and report.sent % bad_every == 0:
            key = f"bad-{report.sent}".encode()
            _produce(producer, topic, key, broken_payload(report.sent))
            report.bad_keys.append(key)
            report.bad += 1
            report.sent += 1
            continue
        stamped = replace(tx, event_time_s=time.time())
        _produce(producer, topic, tx.transaction_id.encode(),
                 orjson.dumps(transaction_to_dict(stamped)))
        report.ids.append(tx.transaction_id)
        if labels is not None and tx.transaction_id in labels:
            report.labels[tx.transaction_id] = labels[tx.transaction_id]
        report.sent += 1
    left = producer.flush(60.0)
    if left:
        raise RuntimeError(f"{left} events were not delivered")
    report.seconds = time.monotonic() - start
    log.info("produced", sent=report.sent, bad=report.bad, seconds=round(report.seconds, 2))
    return report


def _produce(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key)
            return
        except BufferError:
            producer.poll(0.05)


# librdkafka settings for bulk loads: big compressed batches, a deep local queue.
THROUGHPUT_CONFIG: dict[str, Any] = {
    "linger.ms": 50, "batch.size": 1_000_000, "compression.type": "lz4",
    "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 2_097_152,
    "enable.idempotence": True, "acks": "all",
}
# encode(lo, hi, stamp_s) -> (keys, values) of records lo:hi, stamped with stamp_s
ChunkEncoder = Callable[[int, int, float], tuple[list[bytes], list[bytes]]]


def produce_bulk(conf: dict[str, Any], topic: str, n: int, encode: ChunkEncoder, *,
                 chunk: int = 20_000, bad_every: int = 0,
                 labels: dict[str, bool] | None = None,
                 flush_timeout_s: float = 120.0) -> ProduceReport:
    """Produce `n` records as fast as the broker takes them, encoded chunk by chunk.

    Each chunk is encoded just before it is sent and stamped with the wall-clock
    time then, so event-to-score latency stays real to within one chunk. Every
    `bad_every`-th record is replaced by a broken payload (as in `produce_events`).
    """
    producer = Producer({**conf, **THROUGHPUT_CONFIG})
    report = ProduceReport()
    start = time.monotonic()
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        keys, values = encode(lo, hi, time.time())
        for i, (key, value) in enumerate(zip(keys, values, strict=True), start=lo):
            if bad_every and i and i % bad_every == 0:
                key, value = f"bad-{i}".encode(), broken_payload(i)
                report.bad_keys.append(key)
                report.bad += 1
            else:
                report.ids.append(key.decode())
            _produce(producer, topic, key, value)
        producer.poll(0)
    report.sent = n
    if labels is not None:
        report.labels = {i: labels[i] for i in report.ids if i in labels}
    left = producer.flush(flush_timeout_s)
    if left:
        raise RuntimeError(f"{left} events were not delivered")
    report.seconds = time.monotonic() - start
    log.info("produced_bulk", sent=report.sent, bad=report.bad,
             seconds=round(report.seconds, 2))
    return report
