"""What tracing costs per record, in process, no broker (`make bench` → `results.tracing`).

`process_batch` (decode, score, route, commit to a sink that does nothing) over
pre-built batches of `batch` `SourceRecord`s whose headers carry a `traceparent`, with
tracing off and on (the SDK's in-memory exporter behind a simple span processor: the
span is built, ended and handed over on the loop thread, as with OTLP, whose batch
processor only enqueues). The scorer answers at once (a constant per record), so the
numbers are the pipeline's own cost and the difference is what tracing adds; the
ladder's cost per record is what `results.throughput.healthy` measures, and
`overhead_share_of_healthy` puts the two side by side when it is known.

Cases, CPU µs per record (`time.process_time`: time other processes take on a shared
machine is not counted; median, and best, of `rounds` rounds in a rotating order; the
overheads are best minus best, the least disturbed round being the closest to the
code's own cost):
- `off` / `off_no_headers`: no tracer, records with / without a traceparent;
- `on_sampled`: every record's context sampled: one record span per record;
- `on_ratio_0_01`: sampled contexts, `sample_ratio` 0.01: ~1% get a span, the rest
  pass their context through;
- `on_unsampled`: contexts not sampled: passed through, no record span;
- `on_no_headers`: tracing on, no record carries a context: only the batch span.
`from_message` (per record, on confluent-kafka `Message`s) is timed as the worker runs it
now (the headers kept) and as before (without them): the cost tracing puts on the hot
path when it is off.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from confluent_kafka import Message

from scorers.clock import SystemClock
from scorers.deadline import Deadline
from stream_app.devstack.produce import synthetic_events
from stream_app.kafka.records import OutRecord, SourceRecord, from_message
from stream_app.pipeline import BatchContext, Routing, process_batch
from stream_app.tracing import BatchTracer, format_traceparent
from topics.codec import transaction_to_dict
from topics.schemas import Action, Score, Tier, Transaction

TOPIC = "bench.transactions"
ROUTING = Routing("bench.scores", "bench.dead-letter", "bench.review")


class _InstantScorer:
    """One ALLOW per record, no model: the pipeline's cost without the ladder's."""

    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline,
                    shed: Sequence[str] | None = None) -> list[Score]:
        return [Score(t.transaction_id, 0.1, Action.ALLOW, False, Tier.PRIMARY, "bench", 0.9,
                      (), 0.0, 0.0) for t in txs]


class _NullSink:
    def commit(self, records: Sequence[OutRecord],
               batch: Sequence[SourceRecord]) -> Mapping[str, float] | None:
        return {"produce": 0.0, "commit": 0.0}


def _batch(n: int, *, flags: int | None, seed: int = 1) -> list[SourceRecord]:
    """`n` records with a traceparent of `flags` each (random ids), None: no headers."""
    rng = random.Random(seed)
    out = []
    for i, tx in enumerate(synthetic_events(n, "trace-bench")):
        headers = None if flags is None else [
            ("traceparent", format_traceparent(rng.getrandbits(128) | 1,
                                               rng.getrandbits(64) | 1, flags))]
        out.append(SourceRecord(TOPIC, i % 6, i, tx.transaction_id.encode(),
                                orjson.dumps(transaction_to_dict(tx)), None, headers))
    return out


def _tracer(ratio: float) -> tuple[BatchTracer, Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return BatchTracer(provider, sample_ratio=ratio, group_id="bench"), exporter


def _pipeline_step(records: list[SourceRecord], tracer: BatchTracer | None,
                   exporter: Any) -> Callable[[], None]:
    clock = SystemClock()
    ctx = BatchContext(scorer=_InstantScorer(), routing=ROUTING, sink=_NullSink(), clock=clock,
                       budget_s=10.0, tracer=tracer)

    def once() -> None:
        process_batch(records, clock.monotonic(), ctx)
        if exporter is not None:
            exporter.clear()  # keep memory flat: the spans are made, then dropped

    return once


def cpu_s_per_call(fn: Callable[[], object], repeats: int = 3, min_time_s: float = 0.1) -> float:
    """Median CPU seconds (`time.process_time`) per call of `fn`: on a shared machine a
    preempted loop does not count the time others ran (the work here is single-threaded:
    the simple span processor exports on the caller's thread)."""
    fn()  # warm
    loops = 1
    while True:
        t0 = time.process_time()
        for _ in range(loops):
            fn()
        if time.process_time() - t0 >= min_time_s or loops >= 1 << 20:
            break
        loops *= 2
    samples = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(loops):
            fn()
        samples.append((time.process_time() - t0) / loops)
    return statistics.median(samples)


def _from_message_before(msg: Message) -> SourceRecord:
    """`from_message` as it was before the headers field: the 'before' of the same run."""
    ts_type, ts_ms = msg.timestamp()
    return tuple.__new__(SourceRecord, (msg.topic() or "", msg.partition() or 0,
                                        msg.offset() or 0, msg.key(), msg.value(),
                                        ts_ms / 1000.0 if ts_type else None, None))


def _from_message_us(records: list[SourceRecord], repeats: int) -> dict[str, float]:
    def messages(with_headers: bool) -> list[Message]:
        return [Message(topic=r.topic, partition=r.partition, offset=r.offset, key=r.key,
                        value=r.value, timestamp=(1, 1_700_000_000_000),
                        headers=list(r.headers or []) if with_headers else None)
                for r in records]
    n = len(records)
    plain, traced = messages(False), messages(True)

    def per_record(fn: Any, msgs: list[Message]) -> float:
        return cpu_s_per_call(lambda: [fn(m) for m in msgs], repeats=repeats) / n * 1e6

    return {"before_us_per_record": per_record(_from_message_before, plain),
            "now_no_headers_us_per_record": per_record(from_message, plain),
            "now_with_traceparent_us_per_record": per_record(from_message, traced)}


def run_tracing(batch: int = 512, rounds: int = 5,
                healthy_records_per_s: float | None = None) -> dict[str, Any]:
    """Tracing off vs on, µs per record; see the module docstring. The cases run `rounds`
    times in a rotating order (a noisy machine hits them alike); the median counts."""
    sampled, unsampled, bare = (_batch(batch, flags=1), _batch(batch, flags=0),
                                _batch(batch, flags=None))
    tracers = {name: _tracer(ratio) for name, ratio in (
        ("on_sampled", 1.0), ("on_ratio_0_01", 0.01), ("on_unsampled", 1.0),
        ("on_no_headers", 1.0))}
    steps = {"off": _pipeline_step(sampled, None, None),
             "off_no_headers": _pipeline_step(bare, None, None),
             "on_sampled": _pipeline_step(sampled, *tracers["on_sampled"]),
             "on_ratio_0_01": _pipeline_step(sampled, *tracers["on_ratio_0_01"]),
             "on_unsampled": _pipeline_step(unsampled, *tracers["on_unsampled"]),
             "on_no_headers": _pipeline_step(bare, *tracers["on_no_headers"])}
    names = list(steps)
    runs: dict[str, list[float]] = {name: [] for name in names}
    try:
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                seconds = cpu_s_per_call(steps[name])
                runs[name].append(seconds / batch * 1e6)
    finally:
        for tracer, _ in tracers.values():
            tracer.shutdown()
    cases = {name: statistics.median(v) for name, v in runs.items()}
    best = {name: min(v) for name, v in runs.items()}
    overhead = {name: us - best["off"] for name, us in best.items() if name.startswith("on_")}
    out: dict[str, Any] = {
        "batch_records": batch, "rounds": rounds,
        "scorer": "instant (constant answer; the ladder's own cost is not in these numbers)",
        "exporter": "in-memory, simple span processor",
        "clock": "process CPU time (time.process_time)",
        "us_per_record": {k: round(v, 3) for k, v in cases.items()},
        "us_per_record_min": {k: round(v, 3) for k, v in best.items()},
        "overhead_from": "us_per_record_min (the least disturbed round) minus off",
        "overhead_us_per_record": {k: round(v, 3) for k, v in overhead.items()},
        "from_message": {k: round(v, 4) for k, v in _from_message_us(sampled, 5).items()},
    }
    if healthy_records_per_s:
        per_record_us = 1e6 / healthy_records_per_s
        out["healthy_us_per_record"] = round(per_record_us, 2)
        out["overhead_share_of_healthy"] = {k: round(v / per_record_us, 4)
                                            for k, v in overhead.items()}
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run_tracing(), indent=2))
