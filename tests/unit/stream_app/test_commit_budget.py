"""The committer's transaction budget: a retriable error is retried only while budget is
left after it; once spent, the batch is aborted (a retry could last another transaction
timeout: docs/reliability.md, "Broker restart"). A fake clock, no broker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from stream_app.kafka import commit as commit_mod
from stream_app.kafka.commit import BatchCommitter
from stream_app.kafka.errors import FatalError

TIMEOUT_S = 15.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _timed_out() -> KafkaException:
    return KafkaException(KafkaError(KafkaError._TIMED_OUT, "injected", retriable=True))


class SlowProducer:
    """send_offsets fails `fail` times, each after `takes_s` of the fake clock."""

    def __init__(self, clock: Clock, fail: int, takes_s: float) -> None:
        self.clock, self.fail, self.takes_s = clock, fail, takes_s
        self.calls: list[tuple[str, float]] = []

    def begin_transaction(self) -> None:
        self.calls.append(("begin", 0.0))

    def produce(self, *a: Any, **k: Any) -> None:
        pass

    def poll(self, timeout: float = 0) -> int:
        return 0

    def send_offsets_to_transaction(self, offsets: Any, meta: Any, timeout: float) -> None:
        self.calls.append(("send_offsets", timeout))
        if self.fail:
            self.fail -= 1
            self.clock.now += self.takes_s
            raise _timed_out()

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append(("commit", timeout))

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append(("abort", timeout))


class FakeConsumer:
    def consumer_group_metadata(self) -> object:
        return object()

    def seek(self, tp: Any) -> None:
        pass


CONSUMER: Any = FakeConsumer()


def _committer(monkeypatch: pytest.MonkeyPatch, producer: SlowProducer,
               clock: Clock) -> BatchCommitter:
    monkeypatch.setattr(commit_mod, "time", SimpleNamespace(monotonic=clock.monotonic,
                                                            sleep=clock.sleep))
    c = BatchCommitter({"transactional.id": "t"}, exactly_once=True, timeout_s=TIMEOUT_S)
    c._producer = producer  # type: ignore[assignment]
    return c


def test_no_retry_once_the_budget_is_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    p = SlowProducer(clock, fail=1, takes_s=TIMEOUT_S)  # the coordinator is away
    c = _committer(monkeypatch, p, clock)
    assert c.commit([], [], [], CONSUMER) is False
    assert [name for name, _ in p.calls] == ["begin", "send_offsets", "abort"]
    assert p.calls[1][1] == TIMEOUT_S  # the first call has the whole budget
    assert clock.now - 1000.0 == TIMEOUT_S  # the abort's own bound comes on top, once


def test_a_retriable_error_with_budget_left_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    p = SlowProducer(clock, fail=1, takes_s=4.0)
    c = _committer(monkeypatch, p, clock)
    assert c.commit([], [], [], CONSUMER) is True
    assert [name for name, _ in p.calls] == ["begin", "send_offsets", "send_offsets", "commit"]
    assert p.calls[2][1] == TIMEOUT_S - 4.0  # the retry gets what is left
    assert p.calls[3][1] == TIMEOUT_S - 4.0


def test_a_late_call_still_gets_the_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    p = SlowProducer(clock, fail=1, takes_s=TIMEOUT_S - 0.2)
    c = _committer(monkeypatch, p, clock)
    assert c.commit([], [], [], CONSUMER) is True
    assert p.calls[2][1] == commit_mod.MIN_CALL_TIMEOUT_S


class NeverAborts(SlowProducer):
    """The coordinator never answers: every abort times out after its whole timeout."""

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append(("abort", timeout))
        self.clock.now += timeout
        raise _timed_out()


def test_an_abort_that_never_completes_becomes_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    p = NeverAborts(clock, fail=1, takes_s=TIMEOUT_S)
    c = _committer(monkeypatch, p, clock)
    assert c.abort_give_up_s == 2 * TIMEOUT_S + 10.0  # the stall watchdog's bound
    assert c.commit([], [], [], CONSUMER) is False  # aborted; its abort timed out
    assert c.in_transaction
    rounds = 1
    with pytest.raises(FatalError, match="abort not completed"):
        while rounds < 10:
            assert c.commit([], [], [], CONSUMER) is False  # aborts again first
            rounds += 1
    # aborts from t=15 s, each 15 s + a 0.5 s pause: the third ends 46 s after the first
    # began, past the 40 s bound, and gives up (in the third commit)
    assert rounds == 2
    assert [n for n, _ in p.calls].count("abort") == 3
    assert [n for n, _ in p.calls].count("begin") == 1  # nothing new began meanwhile
    # closing after that gives up at once, without another whole abort timeout
    with pytest.raises(FatalError, match="abort not completed"):
        c.abort("closing")
    assert [n for n, _ in p.calls].count("abort") == 3


def test_a_completed_abort_resets_the_give_up_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    p = NeverAborts(clock, fail=0, takes_s=0.0)
    c = _committer(monkeypatch, p, clock)
    c.in_transaction = True
    c.abort("test")  # fails, 15 s
    assert c._abort_failing_since == 1000.0
    p.abort_transaction = lambda timeout: None  # type: ignore[method-assign]
    c.abort("test")
    assert not c.in_transaction and c._abort_failing_since is None
