"""`rung monitor`: the label ⨝ score join as a long-running consumer, with `/metrics`.

One consumer (its own group, `<group>-quality`, `read_committed`) subscribes to the scores
and the labels topics. Each consumed batch is decoded, offered to the join store, counted,
and only then are its offsets stored (auto-committed every few seconds): delivery is at
least once, and the join store's per-transaction markers turn redelivery after a restart
into `duplicate`, so nothing is counted twice while the markers live (30 days by default).
A join-store error counts `rung_quality_join_errors_total` and the same batch is retried
after a pause; its offsets are not stored until it went through.

It runs as its own process, not inside the worker: the worker's loop is budgeted for
scoring (deadline per batch, warm-up, one transaction per batch), and a second consumer
with a Redis round trip per batch does not belong in it. One monitor per deployment is
enough (it scales out with the same group if ever needed; Redis state is shared).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
from confluent_kafka import Consumer, Message, TopicPartition

from stream_app.metrics import QualityMetrics
from stream_app.quality.join import JoinStore, LabelScoreJoin
from stream_app.quality.outcomes import ScoreFacts, outcome
from topics.codec import DecodeError, decode_label, decode_score
from topics.schemas import Label, Score

log = structlog.get_logger(__name__)
RETRY_PAUSE_S: Final = 1.0


class MetricsSink:
    """Joined pairs → `rung_labelled_scores_total{tier,model_version,outcome}`."""

    def __init__(self, metrics: QualityMetrics) -> None:
        self._m = metrics

    def joined(self, facts: ScoreFacts, fraud: bool) -> None:
        self._m.labelled(facts.tier, facts.model_version, outcome(facts.alert, fraud))


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    value: bytes | None


class QualityMonitor:
    """Decodes score and label records, feeds the join, keeps the metrics."""

    def __init__(self, store: JoinStore, metrics: QualityMetrics, scores_topic: str,
                 labels_topic: str) -> None:
        self.join = LabelScoreJoin(store, MetricsSink(metrics))
        self._m = metrics
        self._scores_topic = scores_topic
        self._labels_topic = labels_topic

    def handle(self, records: Sequence[RawRecord]) -> None:
        """Process one consumed batch; raises if the join store fails (nothing counted)."""
        scores: list[Score] = []
        labels: list[Label] = []
        for rec in records:
            if rec.topic == self._scores_topic:
                score = self._score(rec)
                if score is not None:
                    scores.append(score)
            elif rec.topic == self._labels_topic:
                try:
                    labels.append(decode_label(rec.value))
                except DecodeError:
                    self._m.records("labels", "invalid")
        s_report = self.join.add_scores(scores)
        l_report = self.join.add_labels(labels)
        for score in scores:
            self._m.monitored(score.tier, score.model_version, ScoreFacts.of(score).alert)
        for source, rep in (("scores", s_report), ("labels", l_report)):
            for result, n in (("pending", rep.pending), ("joined", rep.joined),
                              ("duplicate", rep.duplicate)):
                if n:
                    self._m.records(source, result, n)

    def handle_retrying(self, batch: Sequence[RawRecord],
                        should_stop: Callable[[], bool]) -> None:
        """`handle`, retried after a pause while the join store fails (pairs that joined
        before the failure come back as duplicates, so nothing is counted twice)."""
        while True:
            try:
                self.handle(batch)
                return
            except Exception as exc:  # noqa: BLE001 - join state down: retry the batch
                self._m.join_error()
                log.warning("quality_join_failed", error=repr(exc), records=len(batch))
                if should_stop():
                    raise
                time.sleep(RETRY_PAUSE_S)

    def _score(self, rec: RawRecord) -> Score | None:
        try:
            score = decode_score(rec.value or b"")
        except (ValueError, KeyError, TypeError):
            self._m.records("scores", "invalid")
            return None
        if score.replay_id is not None:  # a replay's output is no live answer
            self._m.records("scores", "skipped")
            return None
        return score


def monitor_consumer_config(client_conf: dict[str, Any], group_id: str) -> dict[str, Any]:
    conf = dict(client_conf)
    conf.update({
        "group.id": group_id,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,  # stored after the batch went through the join
        "auto.commit.interval.ms": 5000,
        "enable.partition.eof": False,
        "partition.assignment.strategy": "cooperative-sticky",
    })
    return conf


def run_monitor(consumer: Consumer, monitor: QualityMonitor, topics: Sequence[str],
                should_stop: Callable[[], bool], max_s: float | None = None,
                on_assigned: Callable[[int], None] | None = None,
                batch_size: int = 2000) -> int:
    """Consume until `should_stop()` or `max_s`; returns the records processed."""
    assigned: set[tuple[str, int]] = set()

    def on_assign(_c: Consumer, parts: list[TopicPartition]) -> None:
        assigned.update((p.topic, p.partition) for p in parts)
        if on_assigned is not None:
            on_assigned(len(assigned))

    def on_revoke(_c: Consumer, parts: list[TopicPartition]) -> None:
        assigned.difference_update((p.topic, p.partition) for p in parts)
        if on_assigned is not None:
            on_assigned(len(assigned))

    consumer.subscribe(list(topics), on_assign=on_assign, on_revoke=on_revoke,
                       on_lost=on_revoke)
    end = None if max_s is None else time.monotonic() + max_s
    done = 0
    try:
        while not should_stop() and (end is None or time.monotonic() < end):
            msgs = [m for m in consumer.consume(num_messages=batch_size, timeout=0.2)
                    if m.error() is None]
            if not msgs:
                continue
            monitor.handle_retrying([_raw(m) for m in msgs], should_stop)
            consumer.store_offsets(offsets=_next_offsets(msgs))
            done += len(msgs)
        consumer.commit(asynchronous=False)
    except Exception:
        log.exception("quality_monitor_failed")
        raise
    finally:
        consumer.close()
    return done


def _raw(m: Message) -> RawRecord:
    return RawRecord(m.topic() or "", m.partition() or 0, m.offset() or 0, m.value())


def _next_offsets(msgs: Sequence[Message]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for m in msgs:
        key = (m.topic() or "", m.partition() or 0)
        last[key] = max(last.get(key, -1), m.offset() or 0)
    return [TopicPartition(t, p, off + 1) for (t, p), off in last.items()]
