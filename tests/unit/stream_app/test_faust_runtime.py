"""The faust runtime's batch path without a broker: fake events, fake producer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from scorers.clock import FakeClock
from scorers.deadline import Deadline
from stream_app.config import Settings
from stream_app.faust_runtime import FaustRuntime, app_settings
from stream_app.kafka.errors import FatalError
from stream_app.kafka.records import (
    HEADER_MODEL_VERSION,
    HEADER_TIER,
    SourceRecord,
    decode_batch,
)
from topics.codec import decode_dead_letter, decode_score
from topics.schemas import Action, Score, Tier, Transaction

TOPIC = "u.transactions"


class FakeMessage:
    def __init__(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        self.topic, self.partition, self.offset = TOPIC, partition, offset
        self.key, self.value = key, value
        self.headers: list[tuple[str, bytes]] = []  # aiokafka's headers (none here)
        self.refcount = 1  # faust's conductor holds one reference per delivering channel
        self.acked = False

    def incref(self) -> None:
        self.refcount += 1

    def release(self) -> None:
        self.refcount -= 1
        self.acked = self.refcount == 0


class FakeEvent:
    def __init__(self, message: FakeMessage) -> None:
        self.message = message

    def ack(self) -> bool:
        self.message.release()
        return self.message.acked


class FakeProducer:
    """Records sends; fails every delivery when told to."""

    def __init__(self, events: list[FakeEvent], fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, dict[str, bytes]]] = []
        self.acked_at_send: list[bool] = []
        self._events = events
        self._fail = fail

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: Any,
                   timestamp: Any, headers: list[tuple[str, bytes]]) -> asyncio.Future[None]:
        self.sent.append((topic, key, value, dict(headers)))
        self.acked_at_send.append(any(e.message.acked for e in self._events))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._fail:
            fut.set_exception(RuntimeError("KafkaTimeoutError"))
        else:
            fut.set_result(None)
        return fut


class FakeMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, args))


class AmountScorer:
    def __init__(self, drop_one: bool = False) -> None:
        self.deadlines: list[float] = []
        self._drop_one = drop_one

    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline) -> list[Score]:
        self.deadlines.append(deadline.remaining())
        out = [Score(t.transaction_id, 0.9 if (t.amount or 0) > 100 else 0.1,
                     Action.BLOCK if (t.amount or 0) > 100 else Action.ALLOW, False,
                     Tier.FALLBACK, "fb-3", 0.7, (), 0.0, 1.0) for t in txs]
        return out[:-1] if self._drop_one else out


def _tx(tx_id: str, amount: float) -> bytes:
    return orjson.dumps({"transaction_id": tx_id, "amount": amount, "currency": "EUR"})


def _events() -> list[FakeEvent]:
    raw = [(0, 10, b"a", _tx("a", 5.0)), (1, 4, b"b", _tx("b", 500.0)),
           (1, 5, b"bad", b"\xff not json"), (0, 11, b"c", _tx("c", 7.0))]
    return [FakeEvent(FakeMessage(p, o, k, v)) for p, o, k, v in raw]


def _runtime(scorer: Any, events: list[FakeEvent], *, fail: bool = False,
             metrics: Any = None) -> tuple[FaustRuntime, FakeProducer]:
    settings = Settings(topics={"prefix": "u"}, kafka={"delivery": "at_least_once"},
                        batch={"deadline_s": 0.05})
    rt = FaustRuntime(settings, scorer, metrics, clock=FakeClock())
    producer = FakeProducer(events, fail)
    rt.app.producer = producer
    return rt, producer


def test_app_settings_follow_rung_settings() -> None:
    s = Settings(kafka={"bootstrap_servers": "h1:9092, h2:9093", "group_id": "g"},
                 topics={"partitions": 12}, batch={"max_records": 256})
    conf = app_settings(s)
    assert conf["id"] == "g"
    assert conf["broker"] == ["kafka://h1:9092", "kafka://h2:9093"]
    assert conf["processing_guarantee"] == "at_least_once"
    assert conf["web_enabled"] is False and conf["topic_partitions"] == 12
    assert 256 <= conf["stream_buffer_maxsize"] <= 8192


def test_decode_records_dead_letters_what_has_no_identity() -> None:
    recs = [SourceRecord(TOPIC, 2, 7, b"k1", _tx("x", 1.0)),
            SourceRecord(TOPIC, 3, 9, b"k2", b'{"amount": 3}'),
            SourceRecord(TOPIC, 3, 10, None, None)]
    batch = decode_batch(recs)
    assert [t.transaction_id for t in batch.txs] == ["x"] and batch.size == 3
    assert [(d.source_partition, d.source_offset, d.original_key) for d in batch.dead] == [
        (3, 9, b"k2"), (3, 10, None)]
    assert all(d.source_topic == TOPIC and d.error for d in batch.dead)


def test_batch_produces_scores_reviews_dead_letters_then_releases_offsets() -> None:
    events = _events()
    metrics = FakeMetrics()
    scorer = AmountScorer()
    rt, producer = _runtime(scorer, events, metrics=metrics)
    asyncio.run(rt.process(events))

    by_topic: dict[str, list[Any]] = {}
    for topic, key, value, headers in producer.sent:
        by_topic.setdefault(topic, []).append((key, value, headers))
    assert [k for k, _, _ in by_topic["u.scores"]] == [b"a", b"b", b"c"]
    assert [k for k, _, _ in by_topic["u.manual-review"]] == [b"b"]
    key, value, headers = by_topic["u.scores"][1]
    assert decode_score(value).action is Action.BLOCK
    assert headers == {HEADER_TIER: b"fallback", HEADER_MODEL_VERSION: b"fb-3"}
    (dl_key, dl_value, _), = by_topic["u.dead-letter"]
    dl = decode_dead_letter(dl_value)
    assert dl_key == b"bad" and (dl.source_topic, dl.source_partition, dl.source_offset) == (
        TOPIC, 1, 5)
    # Nothing was committable while producing; afterwards rung's reference is gone,
    # and faust's own ack (the last reference) makes each offset committable.
    assert not any(producer.acked_at_send)
    assert all(e.message.refcount == 1 for e in events)
    assert all(e.ack() for e in events)
    assert scorer.deadlines == [pytest.approx(0.05)]
    names = [c[0] for c in metrics.calls]
    assert ("records_in", ("u.transactions", 4)) in metrics.calls
    assert ("dead_lettered", ("decode", 1)) in metrics.calls
    assert ("reviewed", (1,)) in metrics.calls
    assert ("scores_out", ("fallback", "fb-3", 3)) in metrics.calls
    assert "event_to_score_latency" not in names  # no event times in these records
    assert rt.records_committed == 4 and rt.batches_committed == 1


@pytest.mark.parametrize("scorer,fail", [(AmountScorer(), True), (AmountScorer(True), False)])
def test_failed_batch_is_fatal_and_keeps_its_offsets_uncommittable(scorer: Any,
                                                                   fail: bool) -> None:
    events = _events()
    rt, _ = _runtime(scorer, events, fail=fail)
    with pytest.raises(FatalError):
        asyncio.run(rt.process(events))
    for e in events:
        assert not e.ack()  # faust's ack alone leaves rung's reference in place
    assert rt.records_committed == 0


def test_cancel_during_a_batch_lets_it_finish_before_shutdown() -> None:
    rt, _ = _runtime(AmountScorer(), _events())
    rt.shutdown_timeout_s = 5.0
    finished: list[bool] = []

    async def batch() -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        finished.append(True)

    async def main() -> None:
        outer = asyncio.ensure_future(rt._finish(asyncio.ensure_future(batch())))
        await asyncio.sleep(0)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer

    asyncio.run(main())
    assert finished == [True]


def test_fatal_commits_what_is_acked_and_exits_with_code_3() -> None:
    codes: list[int] = []
    settings = Settings(topics={"prefix": "u"}, kafka={"delivery": "at_least_once"})
    metrics = FakeMetrics()
    rt = FaustRuntime(settings, AmountScorer(), metrics, exit_process=codes.append)
    commits: list[bool] = []

    class Consumer:
        async def commit(self) -> bool:
            commits.append(True)
            return True

    rt.app.consumer = Consumer()
    asyncio.run(rt._fail("scorer returned 3 results for 4"))
    assert codes == [3] and commits == [True]
    assert rt.fatal_reason == "scorer returned 3 results for 4"
    assert ("set_fatal", ("scorer returned 3 results for 4",)) in metrics.calls
    assert rt.readiness() == (False, "fatal: scorer returned 3 results for 4")
