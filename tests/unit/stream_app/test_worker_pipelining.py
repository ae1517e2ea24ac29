"""Pipelined commits in the live worker, without a broker: batch N commits on the
committer thread while N+1 is scored; an abort of N discards N+1 and the buffer and
rewinds; a revoke waits for the commit in flight."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from confluent_kafka import TopicPartition

from scorers.clock import FakeClock
from scorers.deadline import Deadline
from stream_app.config import Settings
from stream_app.kafka.records import OutRecord, SourceRecord
from stream_app.live.worker import Worker
from stream_app.pipeline import BatchContext, Routing
from topics.schemas import Action, Score, Tier, Transaction

TOPIC = "t.transactions"


class Msg:
    def __init__(self, partition: int, offset: int) -> None:
        self._p, self._o = partition, offset

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return orjson.dumps({"transaction_id": f"{self._p}-{self._o}", "amount": 1.0})

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def headers(self) -> None:
        return None


class Scorer:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline) -> list[Score]:
        self.batches.append([t.transaction_id for t in txs])
        return [Score(t.transaction_id, 0.1, Action.ALLOW, False, Tier.PRIMARY, "p", 0.8, (),
                      0.0, 0.0) for t in txs]


class GatedSink:
    """Blocks each commit until released; aborts the ones listed."""

    def __init__(self, abort: Sequence[int] = ()) -> None:
        self.abort = set(abort)
        self.entered = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.commits: list[list[int]] = []
        self.log: list[str] = []

    def commit(self, records: Sequence[OutRecord],
               batch: Sequence[SourceRecord]) -> Mapping[str, float] | None:
        n = len(self.commits)
        self.commits.append([r.offset for r in batch])
        self.entered.release()
        assert self.release.acquire(timeout=5)
        self.log.append(f"commit{n}")
        return None if n in self.abort else {"produce": 0.0, "commit": 0.0}


class Consumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[int, int]] = []

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.partition, tp.offset))


def _worker(sink: GatedSink) -> tuple[Worker, Scorer, Consumer]:
    scorer, consumer = Scorer(), Consumer()
    w = Worker(Settings(topics={"prefix": "t"}), scorer, clock=FakeClock())
    w._ctx = BatchContext(scorer=scorer, routing=Routing("t.scores", "t.dl", None), sink=sink,
                          clock=w.clock, budget_s=0.1)
    w._consumer = consumer  # type: ignore[assignment]
    w._assigned = {(TOPIC, 0), (TOPIC, 1)}
    return w, scorer, consumer


def _batch(w: Worker, msgs: list[Msg]) -> Any:
    for m in msgs:
        w.batcher.add(m, w.clock.monotonic())
    return w.batcher.poll_ready(w.clock.monotonic() + 1.0)


def test_batch_n_plus_1_is_scored_while_n_commits_and_commits_after_it() -> None:
    sink = GatedSink()
    w, scorer, _ = _worker(sink)
    assert w._process(_batch(w, [Msg(0, 0), Msg(0, 1)]))
    assert sink.entered.acquire(timeout=5)  # N is committing
    n1 = _batch(w, [Msg(0, 2), Msg(1, 0)])
    t = threading.Thread(target=w._process, args=(n1,))
    t.start()
    while len(scorer.batches) < 2:  # N+1 scored while N's commit is still open
        threading.Event().wait(0.001)
    assert sink.commits == [[0, 1]]
    sink.release.release()
    t.join(5)
    assert sink.entered.acquire(timeout=5)
    sink.release.release()
    w._settle(block=True)
    assert sink.commits == [[0, 1], [2, 0]] and w.records_committed == 4


def test_an_abort_discards_the_next_batch_and_the_buffer_and_rewinds_each_partition() -> None:
    sink = GatedSink(abort=[0])
    w, scorer, consumer = _worker(sink)
    assert w._process(_batch(w, [Msg(0, 10), Msg(0, 11)]))
    n1 = _batch(w, [Msg(0, 12), Msg(1, 5)])
    w.batcher.add(Msg(1, 6), w.clock.monotonic())  # buffered, not yet a batch
    w.batcher.add(Msg(0, 13), w.clock.monotonic())
    sink.release.release()
    assert not w._process(n1)  # N aborted: N+1 (scored) is discarded, not committed
    assert len(scorer.batches) == 2 and sink.commits == [[10, 11]]
    assert sorted(consumer.seeks) == [(0, 10), (1, 5)]
    assert w.batcher.pending == 0 and w.records_committed == 0 and w._aborted is None


def test_an_abort_seen_while_collecting_rewinds_before_the_next_batch_forms() -> None:
    sink = GatedSink(abort=[0])
    w, _, consumer = _worker(sink)
    assert w._process(_batch(w, [Msg(1, 3)]))
    w.batcher.add(Msg(1, 4), w.clock.monotonic())
    sink.release.release()
    w._inflight.result(5)  # type: ignore[union-attr]
    w._settle(block=False)
    w._rewind()
    assert consumer.seeks == [(1, 3)] and w.batcher.pending == 0


def test_a_revoke_waits_for_the_commit_in_flight_before_dropping() -> None:
    sink = GatedSink()
    w, _, _ = _worker(sink)
    assert w._process(_batch(w, [Msg(0, 0)]))
    assert sink.entered.acquire(timeout=5)
    done = threading.Event()

    def revoke() -> None:
        w._on_revoke(None, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
        sink.log.append("revoked")
        done.set()

    t = threading.Thread(target=revoke)
    t.start()
    assert not done.wait(0.05)  # still waiting for the commit
    sink.release.release()
    t.join(5)
    assert sink.log == ["commit0", "revoked"] and w._inflight is None
    assert w._assigned == {(TOPIC, 1)}
