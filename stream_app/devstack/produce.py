"""Producing transaction events: the demo's load generator.

Events come from the simulator in event-time order and are stamped with the
wall-clock time at which they are produced, so event-to-score latency is real.
A small, chosen fraction of records is deliberately broken (not JSON, truncated
JSON) to exercise the dead-letter path.

Two paths: `produce_events` paces `Transaction`s at a steady rate; `produce_bulk`
sends pre-encoded chunks as fast as a throughput-configured producer takes them
(the load generator: `benchmarks/loadgen.py`, `rung produce-demo --rate 0`).

Labels go to the labels topic like production would send them: keyed by
transaction id, the label's time in the payload, in label-time order.
`produce_labels` sends labels whose time has passed (a history) in bulk;
a `LabelFeed` given to `produce_events` or `produce_bulk` releases the others
while the events go out, each once the stream's clock (the simulated event time
of the last event sent) reaches its time. A released label is stamped with the
wall-clock time it is sent at and, when its transaction was sent in the same run,
that transaction's stamped event time; labels still in the future when the
stream ends are not sent (`ProduceReport.labels_pending`).
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import structlog
from confluent_kafka import Producer

from topics.codec import encode_label, transaction_to_dict
from topics.schemas import Label, Transaction

log = structlog.get_logger(__name__)


@dataclass
class ProduceReport:
    sent: int = 0
    bad: int = 0
    ids: list[str] = field(default_factory=list)  # transaction ids of the good records
    bad_keys: list[bytes] = field(default_factory=list)
    seconds: float = 0.0
    labels: dict[str, bool] = field(default_factory=dict)
    labels_sent: int = 0  # label records sent to the labels topic
    labels_pending: int = 0  # labels of a feed whose time had not come when the stream ended


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


class LabelFeed:
    """Labels waiting for their time on the stream's clock, released in label-time order.

    `topic` is the labels topic. `due(clock_s)` hands out, once, every label whose
    `labelled_at_s` is at or before `clock_s` (a label already in the past comes out
    at the first call); `skip(ids)` drops the labels of transactions that were never
    sent (replaced by a broken record).
    """

    def __init__(self, topic: str, labels: Iterable[Label]) -> None:
        self.topic = topic
        self._labels = sorted(labels, key=lambda lb: lb.labelled_at_s)
        self._times = [lb.labelled_at_s for lb in self._labels]
        self._next = 0
        self._skipped: set[str] = set()

    def __len__(self) -> int:
        """Labels not yet released."""
        return len(self._labels) - self._next

    def skip(self, transaction_ids: Iterable[str]) -> None:
        self._skipped.update(transaction_ids)

    def due(self, clock_s: float) -> list[Label]:
        end = bisect_right(self._times, clock_s, lo=self._next)
        out = [lb for lb in self._labels[self._next:end]
               if lb.transaction_id not in self._skipped]
        self._next = end
        return out


def _send_due(producer: Producer, feed: LabelFeed, clock_s: float,
              event_stamps: Mapping[str, float]) -> int:
    """Send the labels due at `clock_s`, stamped now (see the module docstring)."""
    labels = feed.due(clock_s)
    if not labels:
        return 0
    now = time.time()
    for lb in labels:
        event_s = event_stamps.get(lb.transaction_id, lb.event_time_s)
        _send_label(producer, feed.topic, replace(lb, labelled_at_s=now, event_time_s=event_s))
    return len(labels)


def _send_label(producer: Producer, topic: str, label: Label) -> None:
    # The label's time travels in the payload (`labelled_at_s`); the record keeps the
    # broker's create time, so a simulated history weeks old is not past the labels
    # topic's retention the moment it is written.
    _produce(producer, topic, label.transaction_id.encode(), encode_label(label))


def produce_labels(conf: dict[str, Any], topic: str, labels: Sequence[Label], *,
                   flush_timeout_s: float = 120.0) -> int:
    """Send `labels` as they are (their own times), in label-time order, as fast as the
    broker takes them (a history whose labels are all known); return how many."""
    producer = Producer({**conf, **THROUGHPUT_CONFIG})
    start = time.monotonic()
    for i, label in enumerate(sorted(labels, key=lambda lb: lb.labelled_at_s)):
        _send_label(producer, topic, label)
        if i % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(flush_timeout_s)
    if left:
        raise RuntimeError(f"{left} labels were not delivered")
    log.info("labels_produced", sent=len(labels), seconds=round(time.monotonic() - start, 2))
    return len(labels)


def broken_payload(i: int) -> bytes:
    """Deterministic bad records: alternately not JSON and truncated JSON."""
    if i % 2 == 0:
        return b"\xff\xfenot json at all"
    return b'{"transaction_id": "broken-' + str(i).encode() + b'", "amount": 12'


def produce_events(conf: dict[str, Any], topic: str, events: Iterable[Transaction], *,
                   rate_per_s: float, duration_s: float | None = None,
                   max_events: int | None = None, bad_every: int = 0,
                   labels: dict[str, bool] | None = None,
                   label_feed: LabelFeed | None = None) -> ProduceReport:
    """Produce events at a steady rate until the duration or count is reached.

    With a `label_feed`, the labels due by each event's own (simulated) event time
    are sent just before it (see the module docstring).
    """
    producer = Producer({**conf, "linger.ms": 5, "enable.idempotence": True, "acks": "all"})
    report = ProduceReport()
    start = time.monotonic()
    interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
    stamps: dict[str, float] = {}
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
        if label_feed is not None and tx.event_time_s is not None:
            report.labels_sent += _send_due(producer, label_feed, tx.event_time_s, stamps)
        if bad_every and report.sent and report.sent % bad_every == 0:
            if label_feed is not None:
                label_feed.skip([tx.transaction_id])
            key = f"bad-{report.sent}".encode()
            _produce(producer, topic, key, broken_payload(report.sent))
            report.bad_keys.append(key)
            report.bad += 1
            report.sent += 1
            continue
        now = time.time()
        stamped = replace(tx, event_time_s=now)
        if label_feed is not None:
            stamps[tx.transaction_id] = now
        _produce(producer, topic, tx.transaction_id.encode(),
                 orjson.dumps(transaction_to_dict(stamped)))
        report.ids.append(tx.transaction_id)
        if labels is not None and tx.transaction_id in labels:
            report.labels[tx.transaction_id] = labels[tx.transaction_id]
        report.sent += 1
    report.labels_pending = len(label_feed) if label_feed is not None else 0
    left = producer.flush(60.0)
    if left:
        raise RuntimeError(f"{left} events were not delivered")
    report.seconds = time.monotonic() - start
    log.info("produced", sent=report.sent, bad=report.bad, seconds=round(report.seconds, 2),
             labels_sent=report.labels_sent, labels_pending=report.labels_pending)
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
                 flush_timeout_s: float = 120.0, label_feed: LabelFeed | None = None,
                 event_times_s: npt.NDArray[np.float64] | None = None) -> ProduceReport:
    """Produce `n` records as fast as the broker takes them, encoded chunk by chunk.

    Each chunk is encoded just before it is sent and stamped with the wall-clock
    time then, so event-to-score latency stays real to within one chunk. Every
    `bad_every`-th record is replaced by a broken payload (as in `produce_events`).
    With a `label_feed`, the labels due by a chunk's last event time (`event_times_s`:
    the records' own simulated times, keys their transaction ids) follow the chunk.
    """
    if label_feed is not None and (event_times_s is None or len(event_times_s) < n):
        raise ValueError("a label feed needs the event time of every record")
    producer = Producer({**conf, **THROUGHPUT_CONFIG})
    report = ProduceReport()
    start = time.monotonic()
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        stamp = time.time()
        keys, values = encode(lo, hi, stamp)
        for i, (key, value) in enumerate(zip(keys, values, strict=True), start=lo):
            if bad_every and i and i % bad_every == 0:
                if label_feed is not None:
                    label_feed.skip([key.decode()])
                key, value = f"bad-{i}".encode(), broken_payload(i)
                report.bad_keys.append(key)
                report.bad += 1
            else:
                report.ids.append(key.decode())
            _produce(producer, topic, key, value)
        if label_feed is not None and event_times_s is not None:
            stamps = dict.fromkeys((k.decode() for k in keys), stamp)
            report.labels_sent += _send_due(producer, label_feed,
                                            float(event_times_s[hi - 1]), stamps)
        producer.poll(0)
    report.sent = n
    report.labels_pending = len(label_feed) if label_feed is not None else 0
    if labels is not None:
        report.labels = {i: labels[i] for i in report.ids if i in labels}
    left = producer.flush(flush_timeout_s)
    if left:
        raise RuntimeError(f"{left} events were not delivered")
    report.seconds = time.monotonic() - start
    log.info("produced_bulk", sent=report.sent, bad=report.bad,
             seconds=round(report.seconds, 2), labels_sent=report.labels_sent,
             labels_pending=report.labels_pending)
    return report
