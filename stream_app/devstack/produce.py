"""Producing transaction events: the demo's load generator.

Events come from the simulator in event-time order and are stamped with the
wall-clock time at which they are produced, so event-to-score latency is real.
A small, chosen fraction of records is deliberately broken (not JSON, truncated
JSON) to exercise the dead-letter path.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

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


def synthetic_events(n: int, prefix: str = "tx", start: int = 0) -> Iterator[Transaction]:
    """Valid, varied transactions without the simulator (tests, benchmarks, smoke loads);
    ids `<prefix>-<i>` are unique per prefix, so the prediction cache misses."""
    for i in range(start, start + n):
        yield Transaction(
            transaction_id=f"{prefix}-{i}", event_time_s=time.time(),
            customer_id=f"c{i % 977}", terminal_id=f"t{i % 1999}",
            amount=float(5 + (i * 37) % 400), currency="EUR",
            merchant_category=_MCCS[i % len(_MCCS)], is_international=i % 11 == 0,
            has_international_history=i % 3 == 0, account_age_days=(i * 13) % 3000,
            channel=_CHANNELS[i % len(_CHANNELS)])


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
