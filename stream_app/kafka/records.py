"""Turning consumed records into core values, and results back into records.

`SourceRecord` is the runtime-neutral consumed record: the live worker and the
replay adapt confluent-kafka `Message`s with `from_message`, the faust runtime
adapts its events (`stream_app.faust_runtime.source_record`). Everything else
here is a pure function over those values: no I/O. `stream_app.pipeline` uses
them for every runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from confluent_kafka import Message, TopicPartition

from stream_app.kafka.errors import DEAD_LETTER_ERRORS
from topics.codec import decode_transaction, encode_dead_letter, encode_score
from topics.schemas import Action, DeadLetter, Score, Transaction

if TYPE_CHECKING:
    from stream_app.kafka.serde import RecordFormat

HEADER_TIER = "rung-tier"
HEADER_MODEL_VERSION = "rung-model-version"
HEADER_ERROR = "rung-error"
HEADER_REPLAY_ID = "rung-replay-id"

Headers = list[tuple[str, bytes]]
RecordHeaders = Sequence[tuple[str, bytes | None]]  # as consumed: confluent-kafka's list


class SourceRecord(NamedTuple):
    """One consumed record, whatever the runtime (a tuple: cheap to build per record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_s: float | None = None  # the record's Kafka timestamp (epoch s), if it has one
    headers: RecordHeaders | None = None  # as consumed, None when it has none (stream_app.tracing)


_tuple_new = tuple.__new__


def from_message(msg: Message) -> SourceRecord:
    """Adapt a confluent-kafka `Message` (one call per accessor, nothing copied; built
    with `tuple.__new__`, skipping the NamedTuple's Python-level `__new__`: hot path).
    The timestamp is the producer's CreateTime (or the broker's LogAppendTime), None
    when the record has none. The headers list is librdkafka's, None when there are none
    (nothing parsed here: `stream_app.tracing` looks into it only when tracing is on)."""
    ts_type, ts_ms = msg.timestamp()
    return _tuple_new(SourceRecord, (msg.topic() or "", msg.partition() or 0,
                                     msg.offset() or 0, msg.key(), msg.value(),
                                     ts_ms / 1000.0 if ts_type else None, msg.headers()))


@dataclass(slots=True)
class DecodedBatch:
    """One consumed batch split into what can be scored and what cannot."""

    records: Sequence[SourceRecord]
    txs: list[Transaction]
    dead: list[DeadLetter]
    tx_rows: list[int]  # txs[i] was decoded from records[tx_rows[i]]

    @property
    def size(self) -> int:
        return len(self.records)


def decode_batch(records: Sequence[SourceRecord],
                 fmt: RecordFormat | None = None) -> DecodedBatch:
    """Bytes → Transaction; what cannot be decoded or keyed becomes a dead letter that
    keeps the original key and value (policy: `errors.DEAD_LETTER_ERRORS`). `fmt`: the
    topic's value format (`stream_app.kafka.serde`); None or JSON: the codec, inline."""
    decode_value = fmt.decode_transaction if fmt is not None and fmt.kind != "json" else None
    txs: list[Transaction] = []
    dead: list[DeadLetter] = []
    rows: list[int] = []
    append = txs.append
    for i, r in enumerate(records):
        try:  # JSON, the default, calls the codec directly: no wrapper on the hot path
            append(decode_value(r.value, r.topic) if decode_value is not None
                   else decode_transaction(r.value))
        except DEAD_LETTER_ERRORS as exc:
            dead.append(DeadLetter(error=str(exc), source_topic=r.topic,
                                   source_partition=r.partition, source_offset=r.offset,
                                   original_key=r.key, original_value=r.value))
            continue
        rows.append(i)
    return DecodedBatch(records, txs, dead, rows)


def offset_bounds(records: Sequence[SourceRecord]) -> tuple[list[TopicPartition],
                                                            list[TopicPartition]]:
    """`(first_offsets, next_offsets)` in one pass over the batch."""
    low: dict[tuple[str, int], int] = {}
    top: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        off = r.offset
        hi = top.get(key)
        if hi is None:
            top[key] = low[key] = off
        elif off > hi:
            top[key] = off
        elif off < low[key]:
            low[key] = off
    return ([TopicPartition(t, p, o) for (t, p), o in low.items()],
            [TopicPartition(t, p, o + 1) for (t, p), o in top.items()])


def next_offsets(records: Sequence[SourceRecord]) -> list[TopicPartition]:
    """The offsets to commit after a batch: last offset + 1 per partition."""
    top: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        if r.offset >= top.get(key, -1):
            top[key] = r.offset
    return [TopicPartition(t, p, o + 1) for (t, p), o in top.items()]


def first_offsets(records: Sequence[SourceRecord]) -> list[TopicPartition]:
    """Where to rewind to when a batch's transaction is aborted."""
    low: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        if key not in low or r.offset < low[key]:
            low[key] = r.offset
    return [TopicPartition(t, p, o) for (t, p), o in low.items()]


def needs_review(score: Score) -> bool:
    return score.flag_for_review or score.action is not Action.ALLOW


def score_record(score: Score, extra: Headers | None = None,
                 value: bytes | None = None) -> tuple[bytes, bytes, Headers]:
    """`extra`: headers appended as they are (the trace context, `stream_app.tracing`)."""
    headers: Headers = [(HEADER_TIER, score.tier.encode()),
               (HEADER_MODEL_VERSION, score.model_version.encode())]
    if score.replay_id is not None:
        headers.append((HEADER_REPLAY_ID, score.replay_id.encode()))
    if extra:
        headers.extend(extra)
    return (score.transaction_id.encode(), encode_score(score) if value is None else value,
            headers)


def dead_letter_record(dl: DeadLetter,
                       extra: Headers | None = None) -> tuple[bytes | None, bytes, Headers]:
    headers: Headers = [(HEADER_ERROR, dl.error[:512].encode())]
    if extra:
        headers.extend(extra)
    return dl.original_key, encode_dead_letter(dl), headers


OutRecord = tuple[str, bytes | None, bytes, Headers]


def output_records(scores: Sequence[Score], dead: Sequence[DeadLetter], *, scores_topic: str,
                   review_topic: str | None, dead_letter_topic: str,
                   score_headers: Sequence[Headers | None] | None = None,
                   dead_headers: Sequence[Headers | None] | None = None,
                   fmt: RecordFormat | None = None,
                   ) -> tuple[list[OutRecord], int]:
    """Every record one batch produces, and how many of them are review copies.
    `score_headers[i]` / `dead_headers[i]`: extra headers of `scores[i]` (and its review
    copy) / `dead[i]`, e.g. the trace context; None: none. `fmt`: the scores' value
    format (None: JSON); a review copy carries the same bytes as its score."""
    out: list[OutRecord] = []
    reviews = 0
    extras = [None] * len(scores) if score_headers is None else score_headers
    encode = fmt.encode_score if fmt is not None and fmt.kind != "json" else None
    for score, extra in zip(scores, extras, strict=True):
        key, value, headers = score_record(
            score, extra, None if encode is None else encode(score, scores_topic))
        out.append((scores_topic, key, value, headers))
        if review_topic is not None and needs_review(score):
            out.append((review_topic, key, value, headers))
            reviews += 1
    extras_dl = [None] * len(dead) if dead_headers is None else dead_headers
    for dl, extra_dl in zip(dead, extras_dl, strict=True):
        key_dl, value_dl, headers_dl = dead_letter_record(dl, extra_dl)
        out.append((dead_letter_topic, key_dl, value_dl, headers_dl))
    return out, reviews
