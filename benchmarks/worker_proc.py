"""One benchmarked worker, as its own process: `python -m benchmarks.worker_proc '<json>'`.

Modes: `passthrough` (consume → produce the same bytes, no decoding or
scoring, same consumer/producer configs and `BatchCommitter`), and rung's
`Worker` with the ladder `healthy`, with the primary `breaker_open`, or with
the primary `hang`ing (`FaultyModel`, hang_s). It prints one JSON line when
its partitions are assigned (`{"event": "assigned", "t": monotonic}`) and one
when `expect` records are committed (`{"event": "done", ...}`), then exits.
CLOCK_MONOTONIC is system-wide, so the harness can compare the times.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message

from scorers.deadline import Deadline
from scorers.listeners import CacheOutcome, LadderListener
from stream_app.config import Settings
from stream_app.kafka.clients import consumer_config, producer_config
from stream_app.kafka.commit import BatchCommitter
from stream_app.kafka.records import OutRecord, first_offsets, from_message, next_offsets
from stream_app.live.worker import Worker
from topics.schemas import Score, Transaction


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class CountingScorer:
    """Wraps the ladder: per-batch wall time, tiers and reasons of what it answered."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batch_s: list[float] = []
        self.tiers: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()

    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline) -> list[Score]:
        t0 = time.monotonic()
        scores: list[Score] = self.inner.score_batch(txs, deadline)
        self.batch_s.append(time.monotonic() - t0)
        self.tiers.update(s.tier for s in scores)
        for s in scores:
            self.reasons.update(s.reasons)
        return scores


class CacheStats(LadderListener):
    """What the prediction cache did: lookups by outcome and the time it cost per batch
    (its lookup stage and its write-back after the batch)."""

    def __init__(self) -> None:
        self.lookups: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self.fetch_s: list[float] = []  # every feature fetch, in order
        self.misses: Counter[str] = Counter()  # deadline misses by stage
        self.miss_at: list[tuple[str, int]] = []  # (stage, fetches so far): which batch

    def on_cache(self, outcome: CacheOutcome, count: int) -> None:
        self.lookups[outcome] += count

    def on_stage_duration(self, stage: str, seconds: float) -> None:
        if stage in ("cache", "cache_after"):
            self.seconds[stage] += seconds
        elif stage == "feature_fetch":
            self.fetch_s.append(seconds)

    def on_deadline_miss(self, stage: str) -> None:
        self.misses[stage] += 1
        if len(self.miss_at) < 20:
            self.miss_at.append((stage, len(self.fetch_s)))

    def fetch_report(self) -> dict[str, Any]:
        """Feature-fetch times (ms) and where the deadline misses fell: evidence for
        the primary share (a whole batch falls to the fallback when its fetch fails)."""
        ms = sorted(s * 1000.0 for s in self.fetch_s)
        q = (lambda f: round(ms[min(len(ms) - 1, int(f * len(ms)))], 2)) if ms else None
        slow = [(i, round(s * 1000.0, 1)) for i, s in enumerate(self.fetch_s) if s > 0.03]
        return {"n": len(ms), "p50_ms": q(0.5) if q else None, "p99_ms": q(0.99) if q else None,
                "max_ms": ms[-1] if ms else None, "slow_over_30ms": slow[:20],
                "deadline_misses": dict(self.misses), "misses_at_fetch": self.miss_at}


class Passthrough:
    """The ceiling: rung's Kafka edge with the scoring taken out."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.assigned = threading.Event()
        self.records_committed = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        s = self.settings
        names = s.topics.names()
        committer = BatchCommitter(producer_config(s), exactly_once=s.kafka.delivery ==
                                   "exactly_once", timeout_s=s.kafka.transaction_timeout_s)
        consumer = Consumer(consumer_config(s))
        committer.init()
        consumer.subscribe([names.transactions],
                           on_assign=lambda _c, _p: self.assigned.set())
        try:
            while not self._stop.is_set():
                batch = self._collect(consumer)
                if not batch:
                    continue
                srcs = [from_message(m) for m in batch]  # the worker's adaptation cost too
                records: list[OutRecord] = [(names.scores, r.key, r.value or b"", [])
                                            for r in srcs]
                if committer.commit(records, next_offsets(srcs), first_offsets(srcs),
                                    consumer):
                    self.records_committed += len(batch)
        finally:
            committer.close()
            consumer.close()

    def _collect(self, consumer: Consumer) -> list[Message]:
        """Fill one batch like the worker's batcher: size, or linger since the first record."""
        b = self.settings.batch
        out: list[Message] = []
        first = 0.0
        while len(out) < b.max_records and not self._stop.is_set():
            wait = b.poll_timeout_s if not out else first + b.linger_s - time.monotonic()
            if out and wait <= 0:
                break
            msgs = consumer.consume(num_messages=b.max_records - len(out),
                                    timeout=min(wait, b.poll_timeout_s))
            for m in msgs:
                if m.error() is None:
                    if not out:
                        first = time.monotonic()
                    out.append(m)
        return out


def _settings(cfg: dict[str, Any]) -> Settings:
    ladder = {"cache_enabled": True} if cfg["mode"] == "healthy_cache" else {}
    return Settings.model_validate({
        "ladder": ladder,
        "kafka": {"bootstrap_servers": cfg["bootstrap"], "group_id": cfg["group"]},
        "topics": {"prefix": cfg["prefix"]},
        "redis": {"url": cfg["redis_url"]},
        "batch": cfg.get("batch", {}),
        "models": {"primary_dir": cfg["primary_dir"], "fallback_dir": cfg["fallback_dir"],
                   "device": "cpu"},
        "metrics": {"enabled": False},
    })


def _build(cfg: dict[str, Any], settings: Settings,
           listener: LadderListener | None = None) -> tuple[Any, CountingScorer | None]:
    mode = cfg["mode"]
    if mode == "passthrough":
        return Passthrough(settings), None
    from scorers.faults import FaultSwitch, FaultyModel
    from stream_app.wiring import build_scorer

    switch = FaultSwitch()
    wrapper = (lambda m: FaultyModel(m, switch)) if mode == "hang" else None
    ladder = build_scorer(settings, primary_wrapper=wrapper, listener=listener)
    if "primary" in ladder.unavailable:
        raise SystemExit(f"primary unavailable: {ladder.unavailable['primary']}")
    if mode == "breaker_open":
        ladder.breakers["primary"].force_open("benchmark")
    elif mode == "hang":
        switch.set(hang_s=float(cfg["hang_s"]))
    elif mode not in ("healthy", "healthy_cache"):
        raise SystemExit(f"unknown mode {mode!r}")
    scorer = CountingScorer(ladder)
    return Worker(settings, scorer), scorer


def main(cfg: dict[str, Any]) -> int:
    from stream_app.logs import configure_logging

    configure_logging("json", "warning")  # logs to stderr; stdout carries the JSON lines
    settings = _settings(cfg)
    from stream_app.live.gil import set_switch_interval

    set_switch_interval(settings.process.gil_switch_interval_s)  # as `rung run` does
    expect = int(cfg["expect"])
    cache = CacheStats()
    worker, scorer = _build(cfg, settings, cache)
    from stream_app.live.heap import GcPauses, settle_heap

    settle_heap()  # as `rung run` does (stream_app.live.runner)
    pauses: list[float] = []
    gc_watch = GcPauses(lambda _gen, s: pauses.append(s)).start()
    thread = threading.Thread(target=worker.run, name="bench-worker", daemon=True)
    thread.start()
    deadline = time.monotonic() + float(cfg.get("timeout_s", 300))
    assigned = lambda: (worker.assigned.is_set() if isinstance(worker, Passthrough)  # noqa: E731
                        else worker.assigned_partitions > 0)
    while not assigned() and time.monotonic() < deadline:
        time.sleep(0.005)
    t_assigned = time.monotonic()
    emit("assigned", t=t_assigned)
    while worker.records_committed < expect and time.monotonic() < deadline:
        time.sleep(0.002)
    t_done = time.monotonic()
    done: dict[str, Any] = {"t": t_done, "records": worker.records_committed,
                            "seconds": t_done - t_assigned, "pid": _pid(),
                            "fetch": cache.fetch_report(),
                            "gc": {"collections": gc_watch.collections,
                                   "longest_ms": round(gc_watch.longest_s * 1000, 2),
                                   "over_10ms": sum(1 for x in pauses if x > 0.01)}}
    if scorer is not None:
        done.update(batch_s=scorer.batch_s, tiers=dict(scorer.tiers),
                    reasons=dict(scorer.reasons.most_common(12)))
        if settings.ladder.cache_enabled:
            done["cache"] = {"lookups": dict(cache.lookups), "seconds": dict(cache.seconds)}
    emit("done", **done)
    worker.stop()
    thread.join(30)
    return 0 if worker.records_committed >= expect else 1


def _pid() -> int:
    import os

    return os.getpid()


if __name__ == "__main__":
    raise SystemExit(main(json.loads(sys.argv[1] if len(sys.argv) > 1 else
                                     Path("/dev/stdin").read_text())))
