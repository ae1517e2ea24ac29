"""`make demo`: the whole path on the local stack, checked record by record.

Stack up → topics → a worker process (`rung run`) → simulated events for a
while (some deliberately broken), their labels to the labels topic → wait until everything is answered →
SIGTERM the worker → read every output topic back with `read_committed` →
summary table → stack down. Exit 0 only when every produced event has
exactly one score or one dead-letter record.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import structlog
from rich.console import Console
from rich.table import Table

from stream_app.config import Settings, load_settings
from stream_app.devstack.process import WorkerProcess
from stream_app.devstack.produce import (
    LabelFeed,
    ProduceReport,
    produce_bulk,
    produce_events,
    produce_labels,
)
from stream_app.devstack.stack import LocalStack
from stream_app.kafka.admin import create_rung_topics
from stream_app.kafka.readback import Record, read_topic
from stream_app.kafka.records import HEADER_TIER
from topics.catalog import TopicNames
from topics.codec import decode_dead_letter, decode_score
from topics.schemas import Label

if TYPE_CHECKING:
    from scorers.lab.sim.load import Load
    from scorers.lab.sim.simulator import SimData

log = structlog.get_logger(__name__)
TOP_REASONS = 5  # degradation reasons listed in the summary


def produce_simulated(settings: Settings, *, rate_per_s: float, duration_s: float | None,
                      max_events: int | None = None, bad_every: int = 0, seed: int = 7,
                      warm_features: bool = True, customers: int | None = None,
                      terminals: int | None = None, labels: bool = True) -> ProduceReport:
    """Generate the live events (and, to warm the feature store, the history the online
    features read), then produce them: at `rate_per_s`, or as fast as possible when it is 0.

    The feature store is warmed with the history's events only. With `labels`, the
    labels go to the labels topic like production would send them, for the worker's
    label consumer to fold in: the history's labels already known when the live
    events begin at once, in bulk; the others (later history labels, the live
    events' labels) while the events go out, when the stream reaches their time;
    those still in the future at the end are not sent (`_label_feed`).

    Without `customers`, about 1.9 events per customer (the simulator's daily rate
    over one live day); without `terminals`, twice as many terminals as customers.
    """
    from scorers.lab.sim.convert import to_payloads, to_transactions
    from scorers.lab.sim.load import WARM_HISTORY_DAYS, LoadConfig, generate_load

    if rate_per_s <= 0 and max_events is None:
        raise ValueError("producing as fast as possible (rate 0) needs a count")
    wanted = max_events or int(rate_per_s * (duration_s or 10.0)) + 1
    n_customers = customers or max(500, int(wanted / 1.9) + 1)
    cfg = LoadConfig(n_customers=n_customers, n_terminals=terminals or 2 * n_customers,
                     customer_skew=0.0, terminal_skew=0.0)  # the shape the models trained on
    warm = warm_features and settings.redis.url is not None
    t0 = time.monotonic()
    load = generate_load(wanted, cfg, seed, history_days=WARM_HISTORY_DAYS if warm else 0,
                         end_s=time.time())
    log.info("load_generated", live=len(load.live), history=len(load.history),
             seconds=round(time.monotonic() - t0, 1))
    if warm:
        _warm(settings, load.history, f"demo{seed}h")
    live, prefix = load.live, f"demo{seed}"
    truth = {f"{prefix}-{row}": f for row, f in enumerate(live.is_fraud.tolist())}
    conf, topic = settings.kafka.client_config(), settings.topics.names().transactions
    feed, known = _label_feed(settings, load, seed, with_history=warm) if labels else (None, 0)
    if rate_per_s <= 0:
        report = produce_bulk(conf, topic, len(live),
                              lambda lo, hi, stamp: to_payloads(live, lo, hi, prefix, stamp),
                              bad_every=bad_every, labels=truth, label_feed=feed,
                              event_times_s=live.event_time_s)
    else:
        report = produce_events(conf, topic, to_transactions(live, id_prefix=prefix),
                                rate_per_s=rate_per_s, duration_s=duration_s,
                                max_events=max_events, bad_every=bad_every, labels=truth,
                                label_feed=feed)
    report.labels_sent += known
    return report


def _label_feed(settings: Settings, load: Load, seed: int, *,
                with_history: bool) -> tuple[LabelFeed, int]:
    """Send the history's labels known before the first live event to the labels topic
    now, in bulk, with their own times; return a feed of the rest (the history's later
    labels and the live labels) for the live stream to release at their times, and the
    number sent now.

    Ids match the events: `demo{seed}h-<row>` (history), `demo{seed}-<row>` (live).
    Without the history (no feature store to warm) only the live labels are sent.
    """
    from scorers.lab.sim.convert import to_labels

    topic = settings.topics.names().labels
    pending = to_labels(load.live, load.live_labels, f"demo{seed}")
    known: list[Label] = []
    if with_history:
        history = to_labels(load.history, load.history_labels, f"demo{seed}h")
        start_s = float(load.live.event_time_s[0]) if len(load.live) else float("inf")
        known = [lb for lb in history if lb.labelled_at_s <= start_s]
        t0 = time.monotonic()
        produce_labels(settings.kafka.client_config(), topic, known)
        log.info("history_labels_produced", labels=len(known), topic=topic,
                 seconds=round(time.monotonic() - t0, 1))
        pending = history[len(known):] + pending
    return LabelFeed(topic, pending), len(known)


def _warm(settings: Settings, history: SimData, id_prefix: str) -> None:
    from scorers.feature_store import RedisFeatureStore
    from scorers.lab.sim.demo import warm_from_data
    from stream_app.wiring import redis_client

    slow_ok = settings.redis.model_copy(update={"socket_timeout_s": 10.0})
    client = redis_client(settings.model_copy(update={"redis": slow_ok}))
    if client is not None:
        t0 = time.monotonic()
        n = warm_from_data(RedisFeatureStore(client), history, id_prefix)
        log.info("feature_store_warmed", events=n, seconds=round(time.monotonic() - t0, 1))


@dataclass
class Outcome:
    """What came out, checked against what went in."""

    produced: int
    broken: int
    scores: int
    dead: int
    review: int
    missing: int
    duplicates: int
    tiers: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # among non-primary answers
    latency_ms: list[float] = field(default_factory=list)
    span_s: float = 0.0
    detected: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.duplicates == 0

    @property
    def primary_share(self) -> float:
        return self.tiers["primary"] / self.scores if self.scores else 0.0

    @property
    def throughput(self) -> float:
        return (self.scores + self.dead) / self.span_s if self.span_s > 0 else 0.0


def check_outputs(conf: dict[str, object], names: TopicNames, report: ProduceReport,
                  timeout_s: float = 60.0) -> Outcome:
    inputs = read_topic(conf, names.transactions, timeout_s, isolation="read_uncommitted")
    scores = read_topic(conf, names.scores, timeout_s)
    dead = read_topic(conf, names.dead_letter, timeout_s)
    review = read_topic(conf, names.review, timeout_s)
    in_ts = {r.key: r.timestamp_ms for r in inputs}
    answered = Counter([r.key for r in scores])
    dead_keys = Counter(decode_dead_letter(r.value).original_key for r in dead if r.value)
    expected = [i.encode() for i in report.ids] + report.bad_keys
    missing = sum(1 for k in expected if answered[k] + dead_keys[k] == 0)
    dups = sum(max(0, answered[k] + dead_keys[k] - 1) for k in expected)
    out = Outcome(produced=report.sent, broken=report.bad, scores=len(scores), dead=len(dead),
                  review=len(review), missing=missing, duplicates=dups)
    out.tiers = Counter(r.headers.get(HEADER_TIER, b"?").decode() for r in scores)
    out.reasons = degradation_reasons(scores)
    out.latency_ms = [r.timestamp_ms - in_ts[r.key] for r in scores if r.key in in_ts]
    stamps = [r.timestamp_ms for r in inputs] + [r.timestamp_ms for r in scores]
    if stamps:
        out.span_s = (max(stamps) - min(stamps)) / 1000.0
    out.detected = _detection(scores, report.labels)
    return out


def degradation_reasons(scores: list[Record]) -> Counter[str]:
    """How often each reason appears among the scores the primary did not answer."""
    reasons: Counter[str] = Counter()
    for r in scores:
        if r.headers.get(HEADER_TIER) == b"primary":
            continue
        reasons.update(decode_score(r.value or b"{}").reasons)
    return reasons


def _detection(scores: list[Record], labels: dict[str, bool]) -> dict[str, float]:
    """How many simulated frauds were sent to review or blocked, and at what precision."""
    if not labels:
        return {}
    flagged = tp = frauds = 0
    for r in scores:
        s = decode_score(r.value or b"{}")
        is_fraud = labels.get(s.transaction_id)
        if is_fraud is None:
            continue
        hit = s.action.value != "allow"
        frauds += is_fraud
        flagged += hit
        tp += hit and is_fraud
    return {"frauds": frauds, "flagged": flagged,
            "recall": tp / frauds if frauds else 0.0,
            "precision": tp / flagged if flagged else 0.0}


def render_summary(console: Console, out: Outcome) -> None:
    t = Table(title="rung demo summary", show_header=True)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("events in", f"{out.produced} ({out.broken} deliberately broken)")
    t.add_row("scores out", str(out.scores))
    for tier in ("cache", "primary", "fallback", "rules", "default"):
        if out.tiers.get(tier):
            t.add_row(f"  by tier: {tier}", str(out.tiers[tier]))
    if out.scores:
        t.add_row("primary share", f"{out.primary_share:.2%}")
    for reason, n in out.reasons.most_common(TOP_REASONS):
        t.add_row(f"  not primary: {reason}", str(n))
    t.add_row("manual review", str(out.review))
    t.add_row("dead-letter", str(out.dead))
    t.add_row("missing / duplicated", f"{out.missing} / {out.duplicates}")
    t.add_row("throughput", f"{out.throughput:,.0f} records/s")
    if out.latency_ms:
        p50, p99 = np.percentile(out.latency_ms, [50, 99])
        t.add_row("event-to-score latency", f"p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    if out.detected:
        d = out.detected
        t.add_row("simulated frauds caught", f"{d['recall']:.0%} of {int(d['frauds'])} "
                  f"(precision {d['precision']:.0%} of {int(d['flagged'])} flagged)")
    t.add_row("verdict", "[green]every event answered exactly once[/]" if out.ok
              else "[red]LOST OR DUPLICATED RECORDS[/]")
    console.print(t)


def run_demo(*, seconds: float, rate_per_s: float, keep_stack: bool, console: Console) -> int:
    stack = LocalStack()
    t0 = time.monotonic()
    state = stack.up()
    console.print(f"[bold]stack up[/] in {time.monotonic() - t0:.1f}s: kafka "
                  f"{state.bootstrap_servers}, redis {state.redis_url}")
    worker: WorkerProcess | None = None
    try:
        prefix = f"demo-{int(time.time())}"
        settings = load_settings(kafka__bootstrap_servers=state.bootstrap_servers,
                                 topics__prefix=prefix, redis__url=state.redis_url)
        names = settings.topics.names()
        conf = settings.kafka.client_config()
        create_rung_topics(conf, names, settings.topics.partitions)
        worker = WorkerProcess(state.bootstrap_servers, state.redis_url, prefix,
                               capture_logs=False)
        worker.wait_ready(90.0)
        console.print(f"worker ready (metrics on :{worker.port}); producing for {seconds:.0f}s "
                      f"at {rate_per_s:.0f}/s")
        report = produce_simulated(settings, rate_per_s=rate_per_s, duration_s=seconds,
                                   bad_every=997)
        out = _await_answers(conf, names, report, timeout_s=90.0)
        code = worker.terminate(timeout_s=30)
        worker = None
        render_summary(console, out)
        console.print(f"worker exited with code {code}; demo took {time.monotonic() - t0:.0f}s")
        return 0 if out.ok and code == 0 else 1
    finally:
        if worker is not None:
            worker.kill()
        if not keep_stack:
            stack.down()


def _await_answers(conf: dict[str, object], names: TopicNames, report: ProduceReport,
                   timeout_s: float) -> Outcome:
    end = time.monotonic() + timeout_s
    while True:
        out = check_outputs(conf, names, report)
        if out.missing == 0 or time.monotonic() > end:
            return out
        time.sleep(1.0)
