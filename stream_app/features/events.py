"""The transactions feed: what the live worker applies after each committed batch.

`EventFeed.apply_batch(decoded)` hands each partition's records of a committed batch
to the `OffsetApplier` (the watermark logic), as entries: a decoded transaction with a
customer, a terminal and an event time adds to the aggregates; a dead letter
(`undecodable`) or an event without them (`unattributed`) only moves the watermark.
`catch_up(ends)` applies what is missing below the given offsets with no new batch
(the worker calls it with the group's committed offsets: when idle, and for partitions
it has just been assigned before their first records are fetched, with `rounds` > 1 so
that a takeover completes the previous owner's unapplied tail before scoring on it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream_app.features.applier import Entry, OffsetApplier
from stream_app.kafka.errors import DEAD_LETTER_ERRORS
from stream_app.kafka.records import DecodedBatch, SourceRecord, first_offsets
from topics.codec import decode_transaction
from topics.schemas import Transaction

FEED = "transactions"
log = structlog.get_logger(__name__)


def event_entry(offset: int, tx: Transaction | None) -> Entry:
    if tx is None:
        return Entry(offset, "undecodable")
    if tx.customer_id is None or tx.terminal_id is None or tx.event_time_s is None:
        return Entry(offset, "unattributed")
    return Entry(offset, "applied", event=tx)


def decode_event(record: SourceRecord) -> Entry:
    """A record read back from the transactions topic, as the worker decodes it."""
    try:
        tx = decode_transaction(record.value)
    except DEAD_LETTER_ERRORS:
        return Entry(record.offset, "undecodable")
    return event_entry(record.offset, tx)


class EventFeed:
    def __init__(self, applier: OffsetApplier) -> None:
        self.applier = applier

    def claim_batch(self, decoded: DecodedBatch) -> None:
        """Before committing a batch: a watermark for each partition it covers that has
        none yet (`OffsetApplier.claim`)."""
        for tp in first_offsets(decoded.records):
            self.applier.claim(tp.topic, tp.partition, tp.offset)

    def apply_batch(self, decoded: DecodedBatch) -> None:
        """Apply a committed batch, per partition in offset order."""
        txs: dict[int, Transaction] = dict(zip(decoded.tx_rows, decoded.txs, strict=True))
        parts: dict[tuple[str, int], list[Entry]] = {}
        for i, r in enumerate(decoded.records):
            parts.setdefault((r.topic, r.partition), []).append(event_entry(r.offset, txs.get(i)))
        for (topic, partition), entries in parts.items():
            entries.sort(key=lambda e: e.offset)
            self.applier.apply(topic, partition, entries, entries[-1].offset + 1)

    def catch_up(self, ends: Mapping[tuple[str, int], int], rounds: int = 1) -> set[tuple[str, int]]:
        """Apply what is missing below `ends`, up to `rounds` bounded reads per partition
        (`ApplierConfig.max_catch_up_records` each); return the partitions complete."""
        done: set[tuple[str, int]] = set()
        for (topic, partition), end in ends.items():
            for _ in range(max(1, rounds)):
                if self.applier.in_backoff():
                    return done
                if self.applier.catch_up(topic, partition, end):
                    done.add((topic, partition))
                    break
        return done

    def catch_up_committed(self, consumer: Consumer, partitions: Sequence[tuple[str, int]],
                           rounds: int = 1) -> bool:
        """`catch_up` to the group's committed offsets of `partitions`; False when they
        could not be read (or the applier is backing off): try again later."""
        if not partitions or self.applier.in_backoff():
            return not partitions
        try:
            committed = consumer.committed([TopicPartition(t, p) for t, p in partitions],
                                           timeout=1.0)
        except KafkaException as exc:
            log.info("committed_offsets_unavailable", error=str(exc))
            return False
        self.catch_up({(tp.topic, tp.partition): tp.offset for tp in committed
                       if tp.offset >= 0}, rounds)
        return True
