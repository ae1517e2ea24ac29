"""One commit in flight: batch N commits on a committer thread while N+1 is prepared.

A transactional producer has one open transaction, so batches commit one at a
time and in order; what can overlap is batch N's commit (produce, send offsets,
commit: mostly waiting on the broker) with the consuming and scoring of N+1 on
the loop thread. `CommitPipeline` is that pattern, once:

    pipe = CommitPipeline(lambda p: commit_batch(p, ctx))
    prepared = prepare_batch(...)          # loop thread, while N commits
    done = pipe.settle(block=True)         # N's result (None if nothing was in flight)
    if done is not None and not done.committed:
        seek back to rewind_offsets(done.records, prepared.records); drop `prepared`
    else:
        pipe.submit(prepared)              # N+1 commits; the loop consumes N+2

Rules it enforces or leaves to its caller:

- at most one commit in flight: `submit` refuses a second one (settle first);
- the result of a commit is taken on the loop thread (`settle`); an exception on
  the committer thread (`FatalError`, a killed process's `SystemExit` in tests) is
  raised there, once;
- an aborted commit's sink must not rewind the consumer itself (`KafkaSink(...,
  rewind=False)`): a seek from the committer thread would race the loop's
  `consume()`, and the loop has more to discard than the aborted batch (the next
  one, already scored, and whatever it buffered). The caller seeks every
  partition back to the first offset it discards there (`rewind_offsets`), on the
  loop thread, and nothing after an aborted batch is committed before it comes
  again;
- `close` waits (bounded) for the commit in flight, so the producer is never
  closed under the committer thread.

It knows batches only through two read-only attributes (`records`, `committed`), so
it stays below `stream_app.pipeline`. Used by the replay (`stream_app.replay.run`).
The live worker (`stream_app.live.worker`) has the same pattern written inline (with
the records buffered in its micro-batcher to discard too on a rewind); it can adopt
this class with `rewind_offsets(aborted, scored, buffered)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import structlog
from confluent_kafka import TopicPartition

from stream_app.kafka.records import SourceRecord

log = structlog.get_logger(__name__)


class Prepared(Protocol):
    """A batch ready to commit (`stream_app.pipeline.PreparedBatch`)."""

    @property
    def records(self) -> Sequence[SourceRecord]: ...


class Outcome(Protocol):
    """What a commit returns (`stream_app.pipeline.BatchOutcome`)."""

    @property
    def committed(self) -> bool: ...


P = TypeVar("P", bound=Prepared)
R = TypeVar("R", bound=Outcome)


@dataclass(frozen=True, slots=True)
class Settled(Generic[P, R]):
    """A finished commit: the batch handed in and what the commit made of it."""

    prepared: P
    outcome: R

    @property
    def committed(self) -> bool:
        return self.outcome.committed

    @property
    def records(self) -> Sequence[SourceRecord]:
        return self.prepared.records


class CommitPipeline(Generic[P, R]):
    """A single committer thread with at most one prepared batch on it."""

    def __init__(self, commit: Callable[[P], R], *,
                 thread_name: str = "rung-commit") -> None:
        self._commit = commit
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._inflight: Future[R] | None = None
        self._prepared: P | None = None
        self._closed = False

    @property
    def in_flight(self) -> bool:
        return self._inflight is not None

    def submit(self, prepared: P) -> None:
        """Start committing `prepared` on the committer thread; `settle` the previous one first."""
        if self._closed:
            raise RuntimeError("the commit pipeline is closed")
        if self._inflight is not None:
            raise RuntimeError("a commit is already in flight: settle it first")
        self._prepared = prepared
        self._inflight = self._pool.submit(self._commit, prepared)

    def settle(self, *, block: bool, timeout_s: float | None = None) -> Settled[P, R] | None:
        """The commit in flight once it finished (waiting for it if `block`), else None.

        Raises what the commit raised (and forgets it: it is reported once), or
        `TimeoutError` if `block` and it did not finish within `timeout_s` (it stays in
        flight then)."""
        fut = self._inflight
        if fut is None or (not block and not fut.done()):
            return None
        try:
            outcome = fut.result(timeout=timeout_s)  # raises on the loop thread
        except BaseException:
            if fut.done():  # the commit raised (not the wait timing out): report it once
                self._inflight, self._prepared = None, None
            raise
        prepared = self._prepared
        self._inflight, self._prepared = None, None
        assert prepared is not None
        return Settled(prepared, outcome)

    def close(self, timeout_s: float) -> Settled[P, R] | None:
        """Wait up to `timeout_s` for the commit in flight and stop the thread; the result
        of that commit, if there was one and it finished (its error is logged, not raised:
        closing is what happens after a failure, too)."""
        self._closed = True
        settled: Settled[P, R] | None = None
        fut = self._inflight
        if fut is not None:
            try:
                settled = self.settle(block=True, timeout_s=timeout_s)
            except BaseException as exc:  # noqa: BLE001 - closing anyway; the caller saw its own error
                log.warning("commit_in_flight_failed_on_close", error=repr(exc))
                self._inflight, self._prepared = None, None
        self._pool.shutdown(wait=fut is None or fut.done())
        return settled


def rewind_offsets(*discarded: Iterable[SourceRecord]) -> list[TopicPartition]:
    """Where to seek after an abort: per partition, the first offset among every record
    discarded (the aborted batch, the next one, anything buffered), sorted."""
    first: dict[tuple[str, int], int] = {}
    for records in discarded:
        for r in records:
            key = (r.topic, r.partition)
            if r.offset < first.get(key, r.offset + 1):
                first[key] = r.offset
    return [TopicPartition(t, p, o) for (t, p), o in sorted(first.items())]


__all__ = ["CommitPipeline", "Settled", "rewind_offsets"]
