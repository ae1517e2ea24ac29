"""The committer's abort path: a failed begin is aborted, a failed abort is retried first."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from stream_app.kafka import commit as commit_mod
from stream_app.kafka.commit import BatchCommitter


def _err(code: int, *, retriable: bool = False, abortable: bool = False) -> KafkaException:
    return KafkaException(KafkaError(code, "injected", retriable=retriable,
                                     txn_requires_abort=abortable))


class FakeProducer:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.begin_errors: list[KafkaException] = []
        self.abort_errors: list[KafkaException] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")
        if self.begin_errors:
            raise self.begin_errors.pop(0)

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")
        if self.abort_errors:
            raise self.abort_errors.pop(0)

    def produce(self, *a: Any, **k: Any) -> None:
        self.calls.append("produce")

    def poll(self, timeout: float = 0) -> int:
        return 0

    def send_offsets_to_transaction(self, offsets: Any, meta: Any, timeout: float) -> None:
        self.calls.append("send_offsets")

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")


class FakeConsumer:
    def consumer_group_metadata(self) -> object:
        return object()

    def seek(self, tp: Any) -> None:
        pass


@pytest.fixture
def committer(monkeypatch: pytest.MonkeyPatch) -> tuple[BatchCommitter, FakeProducer]:
    monkeypatch.setattr(commit_mod, "ABORT_RETRY_PAUSE_S", 0.0)
    c = BatchCommitter({"transactional.id": "t"}, exactly_once=True, timeout_s=1.0)
    fake = FakeProducer()
    c._producer = fake  # type: ignore[assignment]
    return c, fake


def test_a_failed_begin_is_aborted_so_the_next_commit_can_begin(
        committer: tuple[BatchCommitter, FakeProducer]) -> None:
    c, p = committer
    p.begin_errors.append(_err(KafkaError._STATE, abortable=True))
    assert c.commit([], [], [], FakeConsumer()) is False
    assert p.calls == ["begin", "abort"]
    assert c.commit([], [], [], FakeConsumer()) is True
    assert p.calls[2:] == ["begin", "send_offsets", "commit"]


def test_an_abort_that_cannot_reach_the_broker_is_finished_before_the_next_begin(
        committer: tuple[BatchCommitter, FakeProducer]) -> None:
    c, p = committer
    p.begin_errors.append(_err(KafkaError._TIMED_OUT, retriable=True, abortable=True))
    p.abort_errors += [_err(KafkaError._TIMED_OUT, retriable=True),
                       _err(KafkaError._TIMED_OUT, retriable=True)]
    assert c.commit([], [], [], FakeConsumer()) is False  # begin fails, abort fails
    assert c.in_transaction
    assert c.commit([], [], [], FakeConsumer()) is False  # the abort fails again: no begin
    assert p.calls == ["begin", "abort", "abort"]
    assert c.commit([], [], [], FakeConsumer()) is True  # the abort goes through, then begin
    assert p.calls[3:] == ["abort", "begin", "send_offsets", "commit"]
    assert not c.in_transaction


def test_closing_a_fenced_committer_still_lets_its_producer_go(
        committer: tuple[BatchCommitter, FakeProducer]) -> None:
    from stream_app.kafka.errors import FatalError

    c, p = committer
    c.in_transaction = True
    p.abort_errors.append(_err(KafkaError._FENCED))
    with pytest.raises(FatalError):
        c.close()
    assert p.calls == ["abort"] and c._producer is None  # no handle left to outlive it
