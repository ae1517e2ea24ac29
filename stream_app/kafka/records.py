"""Turning consumed messages into core values, and results back into records.

Pure functions over confluent-kafka `Message` objects: no I/O here. The
worker and the replay tool share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import Message, TopicPartition

from topics.codec import DecodeError, decode_transaction, encode_dead_letter, encode_score
from topics.schemas import Action, DeadLetter, Score, Transaction

HEADER_TIER = "rung-tier"
HEADER_MODEL_VERSION = "rung-model-version"
HEADER_ERROR = "rung-error"
HEADER_REPLAY_ID = "rung-replay-id"

Headers = list[tuple[str, bytes]]


@dataclass(slots=True)
class DecodedBatch:
    """One consumed batch split into what can be scored and what cannot."""

    messages: list[Message]
    txs: list[Transaction]
    dead: list[DeadLetter]

    @property
    def size(self) -> int:
        return len(self.messages)


def decode_batch(messages: Sequence[Message]) -> DecodedBatch:
    txs: list[Transaction] = []
    dead: list[DeadLetter] = []
    for msg in messages:
        value = msg.value()
        try:
            txs.append(decode_transaction(value))
        except DecodeError as exc:
            dead.append(DeadLetter(error=str(exc), source_topic=msg.topic() or "",
                                   source_partition=msg.partition() or 0,
                                   source_offset=msg.offset() or 0,
                                   original_key=msg.key(), original_value=value))
    return DecodedBatch(list(messages), txs, dead)


def next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """The offsets to commit after a batch: last offset + 1 per partition."""
    top: dict[tuple[str, int], int] = {}
    for msg in messages:
        key = (msg.topic() or "", msg.partition() or 0)
        off = msg.offset() or 0
        if off >= top.get(key, -1):
            top[key] = off
    return [TopicPartition(t, p, o + 1) for (t, p), o in top.items()]


def first_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """Where to rewind to when a batch's transaction is aborted."""
    low: dict[tuple[str, int], int] = {}
    for msg in messages:
        key = (msg.topic() or "", msg.partition() or 0)
        off = msg.offset() or 0
        if key not in low or off < low[key]:
            low[key] = off
    return [TopicPartition(t, p, o) for (t, p), o in low.items()]


def needs_review(score: Score) -> bool:
    return score.flag_for_review or score.action is not Action.ALLOW


def score_record(score: Score) -> tuple[bytes, bytes, Headers]:
    headers: Headers = [(HEADER_TIER, score.tier.encode()),
               (HEADER_MODEL_VERSION, score.model_version.encode())]
    if score.replay_id is not None:
        headers.append((HEADER_REPLAY_ID, score.replay_id.encode()))
    return score.transaction_id.encode(), encode_score(score), headers


def dead_letter_record(dl: DeadLetter) -> tuple[bytes | None, bytes, Headers]:
    return dl.original_key, encode_dead_letter(dl), [(HEADER_ERROR, dl.error[:512].encode())]


OutRecord = tuple[str, bytes | None, bytes, Headers]


def output_records(scores: Sequence[Score], dead: Sequence[DeadLetter], *, scores_topic: str,
                   review_topic: str | None, dead_letter_topic: str) -> tuple[list[OutRecord], int]:
    """Every record one batch produces, and how many of them are review copies."""
    out: list[OutRecord] = []
    reviews = 0
    for score in scores:
        key, value, headers = score_record(score)
        out.append((scores_topic, key, value, headers))
        if review_topic is not None and needs_review(score):
            out.append((review_topic, key, value, headers))
            reviews += 1
    for dl in dead:
        key_dl, value_dl, headers_dl = dead_letter_record(dl)
        out.append((dead_letter_topic, key_dl, value_dl, headers_dl))
    return out, reviews
