"""One micro-batch, the same steps in every runtime: `process_batch`.

    decode → deadline → score → check counts → route → commit (sink) → account

The live worker (`stream_app.live.worker`), the replay (`stream_app.replay.run`)
and the faust runtime (`stream_app.faust_runtime`) differ only in what they
hand in: the consumed records (`SourceRecord`, adapted from a confluent-kafka
`Message` or a faust event), the moment the first of them was received, the
routing (data, not code) and the sink that makes the outputs durable and the
offsets committed:

- live worker: `BatchCommitter`, one Kafka transaction per batch (or produce,
  flush, commit offsets at-least-once);
- replay: `BatchCommitter` on the replay's transactional producer, offsets
  carrying the stored range as metadata; routing with no review topic and a
  replay-id tag on every score;
- faust: its asyncio producer, at-least-once (produce everything, await every
  ack; the runtime then releases the offsets).

The deadline
------------
A batch's deadline is an absolute instant on the monotonic clock: the moment
rung received the batch's FIRST record plus the configured budget
(`batch.deadline_s` for the live worker and the faust runtime; the replay's
`--deadline-s`, where "none" means a large bound, `DISABLED_DEADLINE_S`).
Decoding and scoring happen within it: the ladder gets the `Deadline` and each
tier takes only what is left, degrading rather than overrunning. Producing and
committing happen after it and are bounded by the Kafka client's own timeouts
(`kafka.transaction_timeout_s`). "Received" is when the runtime got the record
from its client: the worker's `consume()`/`poll()` return (kept across a
rebalance), the replay's `consume()` return, and for faust the moment
`take_events` hands over the batch (faust does not expose earlier per-record
receipt times).

Exactly one answer per record: every record leaves as one score or one dead
letter, checked here (`scores + dead letters == records`); a scorer that raises
or answers a different number of records is fatal (`FatalError`), and so the
batch is never committed. An aborted commit (the sink returns None) accounts
nothing: the records come again. The outcome carries the decoded batch, so a
runtime can apply it to the feature store once it is committed (the live worker
does, `stream_app.features`); nothing here writes features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from scorers.clock import Clock
from scorers.deadline import Deadline
from scorers.listeners import LadderListener
from stream_app.accounting import BatchMetrics, report_batch
from stream_app.kafka.errors import FatalError
from stream_app.kafka.records import (
    DecodedBatch,
    OutRecord,
    SourceRecord,
    decode_batch,
    output_records,
)
from topics.schemas import Score, Transaction


class BatchScorer(Protocol):
    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline) -> list[Score]: ...


class WorkerMetrics(BatchMetrics, Protocol):
    """What a runtime reports; `stream_app.metrics.Metrics` implements it."""

    @property
    def ladder_listener(self) -> LadderListener: ...
    def transaction_aborted(self, reason: str) -> None: ...
    def set_assigned_partitions(self, n: int) -> None: ...
    def set_fatal(self, reason: str | None) -> None: ...
    def update_from_librdkafka_stats(self, stats_json: str) -> None: ...
    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None: ...
    def drop_consumer_lag(self, partitions: Any = None) -> None: ...


class BatchSink(Protocol):
    """Makes one batch's outputs durable and its source offsets committed."""

    def commit(self, records: Sequence[OutRecord],
               batch: Sequence[SourceRecord]) -> Mapping[str, float] | None:
        """Produce `records` and commit `batch`'s offsets; return the stage durations it
        measured (e.g. `produce`, `commit`), or None if the batch was aborted and rewound.
        Raises `FatalError` when neither is possible."""
        ...


@dataclass(frozen=True, slots=True)
class Routing:
    """Where a batch's outputs go."""

    scores_topic: str
    dead_letter_topic: str
    review_topic: str | None  # None: no review copies (replay)
    replay_id: str | None = None  # set: every score is tagged with it (and its header)


@dataclass(frozen=True, slots=True)
class BatchContext:
    """Everything `process_batch` needs besides the records; built once per runtime."""

    scorer: BatchScorer
    routing: Routing
    sink: BatchSink
    clock: Clock
    budget_s: float  # the deadline budget from the first record's receipt
    metrics: BatchMetrics | None = None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    committed: bool  # False: aborted and rewound, nothing accounted
    records: int
    scores: list[Score]
    dead_letters: int
    reviews: int
    deadline: Deadline
    score_s: float  # time spent in the scorer (the batcher's inference estimate)
    decoded: DecodedBatch | None = None  # the records as decoded (the live feature feed)


def batch_deadline(clock: Clock, first_received_s: float, budget_s: float) -> Deadline:
    """The one meaning of a batch's deadline: first record's receipt + budget."""
    return Deadline(clock, first_received_s + max(0.0, budget_s))


def process_batch(records: Sequence[SourceRecord], first_received_s: float,
                  ctx: BatchContext) -> BatchOutcome:
    """Decode, score, route, commit and account one batch (see the module docstring)."""
    clock = ctx.clock
    deadline = batch_deadline(clock, first_received_s, ctx.budget_s)
    t0 = clock.monotonic()
    decoded = decode_batch(records)
    t1 = clock.monotonic()
    scores = _score(ctx.scorer, decoded.txs, deadline)
    t2 = clock.monotonic()
    if len(scores) + len(decoded.dead) != len(records):
        raise FatalError(f"scorer answered {len(scores)} of {len(decoded.txs)} records")
    routing = ctx.routing
    if routing.replay_id is not None:
        rid = routing.replay_id
        scores = [dataclasses.replace(s, replay_id=rid) for s in scores]
    out, reviews = output_records(scores, decoded.dead, scores_topic=routing.scores_topic,
                                  review_topic=routing.review_topic,
                                  dead_letter_topic=routing.dead_letter_topic)
    stages = ctx.sink.commit(out, records)
    outcome = BatchOutcome(stages is not None, len(records), scores, len(decoded.dead), reviews,
                           deadline, t2 - t1, decoded)
    if stages is not None and ctx.metrics is not None and records:
        report_batch(ctx.metrics, records[0].topic, n_records=len(records), txs=decoded.txs,
                     scores=scores, n_dead=len(decoded.dead), n_reviews=reviews,
                     now_wall_s=clock.wall(), stages={"decode": t1 - t0, **stages})
    return outcome


def _score(scorer: BatchScorer, txs: list[Transaction], deadline: Deadline) -> list[Score]:
    if not txs:
        return []
    try:
        return scorer.score_batch(txs, deadline)
    except Exception as exc:  # the ladder must not raise; if it does, the batch cannot be answered
        raise FatalError(f"scorer raised: {exc!r}") from exc
