"""The replay loop over an in-memory broker: bounded range, aborts, crash and resume.

No broker and no sleeps: a fake consumer serves per-partition logs, a fake
committer keeps the "committed" outputs and offsets, and the clock is fake.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from confluent_kafka import TopicPartition

from scorers.clock import FakeClock
from scorers.deadline import Deadline
from stream_app.config import Settings
from stream_app.replay import run as replay_mod
from stream_app.replay.run import Replay, ReplayError, ReplayOptions
from topics.codec import decode_score, encode_transaction
from topics.schemas import Action, Score, Tier, Transaction

TOPIC = "rung.transactions"


@dataclass
class Msg:
    _partition: int
    _offset: int
    _value: bytes
    _key: bytes

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def timestamp(self) -> tuple[int, int]:
        return (0, -1)  # TIMESTAMP_NOT_AVAILABLE (from_message reads it)

    def headers(self) -> None:
        return None  # from_message reads it too

    def value(self) -> bytes:
        return self._value


@dataclass
class Broker:
    logs: dict[int, list[Msg]]
    high: dict[int, int]  # the watermark the replay snapshots (logs may hold more: later writes)
    committed: dict[int, tuple[int, str]] = field(default_factory=dict)
    outputs: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    commits: int = 0


def make_broker(per_partition: int, later: int = 0, bad_every: int = 0) -> Broker:
    logs: dict[int, list[Msg]] = {}
    for p in range(3):
        log = []
        for o in range(per_partition + later):
            tx_id = f"p{p}-o{o}"
            bad = bad_every and o % bad_every == bad_every - 1
            value = b"\xffbroken" if bad else encode_transaction(tx(tx_id))
            log.append(Msg(p, o, value, tx_id.encode()))
        logs[p] = log
    return Broker(logs, {p: per_partition for p in logs})


def tx(tx_id: str) -> Transaction:
    return Transaction(tx_id, 1_700_000_000.0, "c", "t", 10.0, "EUR", "5411", False, False, 10,
                       "pos")


class FakeConsumer:
    def __init__(self, broker: Broker) -> None:
        self.b = broker
        self.pos: dict[int, int] = {}
        self.paused: set[int] = set()

    def list_topics(self, topic: str, timeout: float) -> Any:
        meta = type("T", (), {"error": None, "partitions": {p: None for p in self.b.logs}})()
        return type("M", (), {"topics": {TOPIC: meta}})()

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, tp.partition, *self.b.committed.get(tp.partition, (-1001, "")))
                for tp in tps]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float,
                              cached: bool) -> tuple[int, int]:
        return 0, self.b.high[tp.partition]

    def assign(self, tps: list[TopicPartition]) -> None:
        self.pos = {tp.partition: tp.offset for tp in tps}

    def seek(self, tp: TopicPartition) -> None:
        self.pos[tp.partition] = tp.offset

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in tps}

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        out: list[Msg] = []
        for p in sorted(self.pos):
            if p in self.paused:
                continue
            take = self.b.logs[p][self.pos[p]:self.pos[p] + num_messages - len(out)]
            out.extend(take)
            self.pos[p] += len(take)
        return out

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, tp.partition, self.pos[tp.partition]) for tp in tps]

    def consumer_group_metadata(self) -> object:
        return object()

    def close(self) -> None:
        pass


class FakeCommitter:
    """Commits into the broker; can abort the Nth commit or 'die' before the Nth."""

    def __init__(self, broker: Broker, abort_at: int | None = None,
                 crash_at: int | None = None) -> None:
        self.b, self.abort_at, self.crash_at = broker, abort_at, crash_at
        self.last_produce_s = self.last_commit_s = 0.0

    def init(self) -> None:
        pass

    def commit(self, records: Sequence[Any], offsets: list[TopicPartition],
               rewind_to: list[TopicPartition], consumer: FakeConsumer) -> bool:
        self.b.commits += 1
        if self.b.commits == self.crash_at:
            raise SystemExit("killed")  # the open transaction is lost with the process
        if self.b.commits == self.abort_at:
            for tp in rewind_to:
                consumer.seek(tp)
            return False
        self.b.outputs.extend((topic, key, value) for topic, key, value, _h in records)
        for tp in offsets:
            self.b.committed[tp.partition] = (tp.offset, tp.metadata)
        return True

    def close(self) -> None:
        pass


class Scorer:
    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline) -> list[Score]:
        return [Score(t.transaction_id, 0.2, Action.ALLOW, False, Tier.PRIMARY, "v9", 0.9, (),
                      0.0, 0.0) for t in txs]


def run(broker: Broker, monkeypatch: pytest.MonkeyPatch, committer: FakeCommitter,
        **kw: Any) -> replay_mod.ReplaySummary:
    monkeypatch.setattr(replay_mod, "Consumer", lambda conf: FakeConsumer(broker))
    monkeypatch.setattr(replay_mod, "BatchCommitter", lambda *a, **k: committer)
    monkeypatch.setattr(replay_mod, "ensure_output_topics", lambda *a: [])
    options = ReplayOptions("r1", TOPIC, "out", **{"from_spec": "earliest", "batch_records": 7,
                                                   **kw})
    return Replay(Settings(), options, Scorer(), clock=FakeClock()).run()


def answered_keys(broker: Broker) -> list[bytes | None]:
    return [key for _t, key, _v in broker.outputs]


def test_the_snapshotted_range_is_answered_exactly_once(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = make_broker(20, later=5, bad_every=10)
    summary = run(broker, monkeypatch, FakeCommitter(broker))
    keys = answered_keys(broker)
    assert len(keys) == len(set(keys)) == 60  # the 15 later records are not in the range
    assert summary.records == 60 and summary.dead_letters == 6 and summary.scores == 54
    assert summary.complete and not summary.resumed
    assert {t for t, _k, _v in broker.outputs} == {"out", "out.dead-letter"}
    scores = [decode_score(v) for t, _k, v in broker.outputs if t == "out"]
    assert {s.replay_id for s in scores} == {"r1"}
    for p in range(3):
        offset, meta = broker.committed[p]
        assert offset == 20 and orjson.loads(meta)["e"] == 20


def test_an_aborted_batch_comes_again_without_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = make_broker(20)
    summary = run(broker, monkeypatch, FakeCommitter(broker, abort_at=3))
    keys = answered_keys(broker)
    assert len(keys) == len(set(keys)) == 60 and summary.aborted == 1


def test_a_killed_run_resumes_the_stored_range(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = make_broker(20)
    with pytest.raises(SystemExit):
        run(broker, monkeypatch, FakeCommitter(broker, crash_at=5))
    assert 0 < len(broker.outputs) < 60
    broker.high = {p: 25 for p in broker.high}  # producers went on; the plan must not grow
    for p in broker.logs:
        broker.logs[p] += [Msg(p, o, encode_transaction(tx(f"late-{p}-{o}")), b"late")
                           for o in range(20, 25)]
    summary = run(broker, monkeypatch, FakeCommitter(broker), from_spec=None)
    keys = answered_keys(broker)
    assert len(keys) == len(set(keys)) == 60 and b"late" not in keys
    assert summary.resumed and summary.complete and summary.planned == 60
    again = run(broker, monkeypatch, FakeCommitter(broker))
    assert again.records == 0 and again.complete


def test_a_new_replay_needs_from_and_never_the_live_group(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = make_broker(3)
    with pytest.raises(ReplayError, match="--from is required"):
        run(broker, monkeypatch, FakeCommitter(broker), from_spec=None)
    live = Settings.model_validate({"kafka": {"group_id": "rung-replay-r1"}})
    with pytest.raises(ReplayError, match="live group"):
        Replay(live, ReplayOptions("r1", TOPIC, "out"), Scorer())
