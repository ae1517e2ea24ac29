"""The transactions feed: what the live worker applies after each committed batch.

`EventFeed.apply_batch(decoded)` hands each partition's records of a committed batch
to the `OffsetApplier` (the watermark logic), as entries: a decoded transaction with a
customer, a terminal and an event time adds to the aggregates; a dead letter
(`undecodable`) or an event without them (`unattributed`) only moves the watermark.
`catch_up(ends)` applies what is missing below the given offsets with no new batch
(the worker calls it when idle, with the group's committed offsets).
"""

from __future__ import annotations

from collections.abc import Mapping

from stream_app.features.applier import Entry, OffsetApplier
from stream_app.kafka.errors import DEAD_LETTER_ERRORS
from stream_app.kafka.records import DecodedBatch, SourceRecord
from topics.codec import decode_transaction
from topics.schemas import Transaction

FEED = "transactions"


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

    def apply_batch(self, decoded: DecodedBatch) -> None:
        """Apply a committed batch, per partition in offset order."""
        txs: dict[int, Transaction] = dict(zip(decoded.tx_rows, decoded.txs, strict=True))
        parts: dict[tuple[str, int], list[Entry]] = {}
        for i, r in enumerate(decoded.records):
            parts.setdefault((r.topic, r.partition), []).append(event_entry(r.offset, txs.get(i)))
        for (topic, partition), entries in parts.items():
            entries.sort(key=lambda e: e.offset)
            self.applier.apply(topic, partition, entries, entries[-1].offset + 1)

    def catch_up(self, ends: Mapping[tuple[str, int], int]) -> None:
        for (topic, partition), end in ends.items():
            if self.applier.in_backoff():
                return
            self.applier.catch_up(topic, partition, end)
