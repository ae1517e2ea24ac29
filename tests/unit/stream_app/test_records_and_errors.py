from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException

from stream_app.kafka.errors import (
    FatalError,
    Policy,
    abort_reason,
    classify_consumer_error,
    classify_coordinator_error,
    classify_transaction_error,
    retry_within,
)
from stream_app.kafka.records import (
    SourceRecord,
    decode_batch,
    first_offsets,
    from_message,
    needs_review,
    next_offsets,
    offset_bounds,
    score_record,
)
from topics.codec import decode_dead_letter
from topics.schemas import Action, Score, Tier


@dataclass
class FakeMessage:
    """Stands in for confluent_kafka.Message (a C type that cannot be built in Python)."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None
    _key: bytes | None = None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def timestamp(self) -> tuple[int, int]:
        return (0, -1)  # TIMESTAMP_NOT_AVAILABLE

    def headers(self) -> None:
        return None


def _records(msgs: list[FakeMessage]) -> list[SourceRecord]:
    return [from_message(m) for m in msgs]  # type: ignore[arg-type]


def test_decode_batch_splits_good_from_dead_and_keeps_coordinates() -> None:
    msgs = [FakeMessage("in", 0, 5, orjson.dumps({"transaction_id": "a", "amount": 3})),
            FakeMessage("in", 1, 9, b"\x00 not json", b"k"),
            FakeMessage("in", 0, 6, None)]
    batch = decode_batch(_records(msgs))
    assert [t.transaction_id for t in batch.txs] == ["a"]
    assert [(d.source_partition, d.source_offset) for d in batch.dead] == [(1, 9), (0, 6)]
    assert batch.dead[0].original_value == b"\x00 not json" and batch.dead[0].original_key == b"k"
    assert batch.size == 3


def test_offsets_to_commit_and_to_rewind_to() -> None:
    msgs = [FakeMessage("in", 0, 5, b""), FakeMessage("in", 0, 7, b""),
            FakeMessage("in", 2, 1, b"")]
    nxt = {(tp.partition, tp.offset) for tp in next_offsets(_records(msgs))}
    first = {(tp.partition, tp.offset) for tp in first_offsets(_records(msgs))}
    assert nxt == {(0, 8), (2, 2)} and first == {(0, 5), (2, 1)}
    low, high = offset_bounds(_records(msgs + [FakeMessage("in", 0, 6, b"")]))
    assert {(tp.partition, tp.offset) for tp in high} == nxt
    assert {(tp.partition, tp.offset) for tp in low} == first
    assert _records(msgs)[0] == SourceRecord("in", 0, 5, None, b"")


def test_review_routing_and_headers() -> None:
    s = Score("t", 0.2, Action.ALLOW, False, Tier.PRIMARY, "p-1", 0.9, (), 0.0, 0.0)
    assert not needs_review(s)
    assert needs_review(Score("t", 0.0, Action.ALLOW, True, Tier.DEFAULT, "default", 0.0,
                              (), 0.0, 0.0))
    assert needs_review(Score("t", 0.99, Action.BLOCK, False, Tier.PRIMARY, "p", 1.0,
                              (), 0.0, 0.0))
    key, _value, headers = score_record(s)
    assert key == b"t" and dict(headers) == {"rung-tier": b"primary",
                                             "rung-model-version": b"p-1"}


def test_error_policy() -> None:
    fenced = KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
    abortable = KafkaException(KafkaError(KafkaError._STATE, "abort", txn_requires_abort=True))
    retriable = KafkaException(KafkaError(KafkaError._TIMED_OUT, "slow", retriable=True))
    assert classify_transaction_error(fenced) is Policy.FATAL
    assert classify_transaction_error(abortable) is Policy.ABORT
    assert classify_transaction_error(retriable) is Policy.RETRY
    assert classify_transaction_error(RuntimeError("?")) is Policy.FATAL
    assert classify_consumer_error(KafkaError(KafkaError._PARTITION_EOF)) is None
    assert classify_consumer_error(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)) is Policy.FATAL


def test_dead_letter_keeps_original_bytes() -> None:
    batch = decode_batch(_records([FakeMessage("in", 3, 4, b"\xff")]))
    from stream_app.kafka.records import dead_letter_record

    _key, value, headers = dead_letter_record(batch.dead[0])
    dl = decode_dead_letter(value)
    assert dl.original_value == b"\xff" and dl.source_offset == 4
    assert dict(headers)["rung-error"].startswith(b"not valid JSON")


def test_abort_reason_is_a_bounded_code_name_not_the_error_text() -> None:
    exc = KafkaException(KafkaError(KafkaError._TIMED_OUT, "broker 7 at 10.0.0.3 timed out"))
    assert abort_reason(exc) == "timed_out"
    exc = KafkaException(KafkaError(KafkaError.INVALID_TXN_STATE, "txn 12345 state"))
    assert abort_reason(exc) == "invalid_txn_state"
    assert abort_reason(RuntimeError("free text")) == "unknown"


def test_coordinator_errors_are_retried_within_the_budget_then_fatal() -> None:
    moving = KafkaException(KafkaError(KafkaError.NOT_COORDINATOR, "moving"))
    denied = KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "no"))
    assert classify_coordinator_error(moving) is Policy.RETRY
    assert classify_coordinator_error(denied) is Policy.FATAL
    now = [0.0]
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise moving
        return "ok"

    def sleep(s: float) -> None:
        now[0] += s

    assert retry_within(flaky, 5.0, classify_coordinator_error, what="x",
                        monotonic=lambda: now[0], sleep=sleep) == "ok"

    def always() -> str:
        raise moving

    with pytest.raises(FatalError, match="x failed"):
        retry_within(always, 1.0, classify_coordinator_error, what="x",
                     monotonic=lambda: now[0], sleep=sleep)

    def refused() -> str:
        raise denied

    with pytest.raises(FatalError):
        retry_within(refused, 5.0, classify_coordinator_error, what="x",
                     monotonic=lambda: now[0], sleep=sleep)
