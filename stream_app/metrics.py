"""Prometheus metrics for rung (with `stream_app.model_metrics` and `.shadow_metrics`,
the only modules that import `prometheus_client`; each of those takes `Metrics.registry`).

`Metrics` owns a `CollectorRegistry` (its own by default, so tests can build
many) and exposes a few calls per batch to the worker plus a `LadderListener`
for the pure core. Every name starts with `rung_`, carries its unit, and
counters end in `_total`. Labels are low cardinality: tier, model_version,
stage, reason, outcome, dependency, state, topic, partition.

Two counts of answers exist on purpose:
- `rung_scores_total{tier,model_version}` is what the worker actually produced
  (`scores_out`), after the transaction that carried it was committed. The
  dashboard and the alerts use this one.
- `rung_ladder_answers_total{tier,model_version}` is what the core answered
  (`LadderListener.on_tier_result`), including batches whose transaction was
  later aborted and replayed. The gap between the two is rework.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import numpy as np
import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from scorers.listeners import BatchCloseReason, CacheOutcome, LadderListener
from scorers.policy import PolicyListener

log = structlog.get_logger(__name__)

_go_float: Callable[[float], str] = floatToGoString  # the `le` spelling prometheus_client uses

# 1 ms .. 10 s, dense around the 50 ms per-batch deadline.
LATENCY_BUCKETS_S: Final[tuple[float, ...]] = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS: Final[tuple[float, ...]] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
BREAKER_STATES: Final[tuple[str, ...]] = ("closed", "open", "half_open", "forced_open", "disabled")
CACHE_OUTCOMES: Final[tuple[CacheOutcome, ...]] = ("hit", "miss", "stale")
STAGES: Final[tuple[str, ...]] = (
    "decode", "features", "cache", "primary", "fallback", "rules", "produce", "commit",
)  # fmt: skip


class BulkHistogram(Collector):
    """A label-less histogram that takes a whole batch of observations at once.

    `prometheus_client.Histogram.observe` takes a lock per value; one batch of
    event-to-score latencies is hundreds of values, so this bins them with
    numpy and adds the counts under one lock.
    """

    def __init__(self, name: str, documentation: str, buckets_s: Sequence[float]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = np.asarray(buckets_s, dtype=np.float64)
        if self._bounds.size == 0 or np.any(np.diff(self._bounds) <= 0):
            raise ValueError("buckets must be strictly increasing and non-empty")
        self._counts = np.zeros(self._bounds.size + 1, dtype=np.int64)  # last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: Iterable[float] | np.ndarray) -> None:
        arr = np.asarray(values if isinstance(values, np.ndarray) else list(values), np.float64)
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            return
        # side="left": a value equal to a bound falls in that bucket (le is inclusive).
        idx = np.searchsorted(self._bounds, arr, side="left")
        binned = np.bincount(idx, minlength=self._counts.size)
        total = float(arr.sum())
        with self._lock:
            self._counts += binned
            self._sum += total

    def collect(self) -> Iterable[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        les = [_go_float(float(b)) for b in self._bounds] + ["+Inf"]
        family = HistogramMetricFamily(self._name, self._documentation)
        family.add_metric([], list(zip(les, (float(c) for c in cumulative), strict=True)), total)
        yield family

    def describe(self) -> Iterable[HistogramMetricFamily]:
        return self.collect()


class Metrics:
    """Every rung metric, registered on one registry. Calls are cheap and thread-safe."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._records_in = Counter(
            "rung_records_in_total", "Records consumed from Kafka.", ["topic"], registry=r
        )
        self._scores = Counter(
            "rung_scores_total",
            "Scores produced and committed, by the tier that answered.",
            ["tier", "model_version"],
            registry=r,
        )
        self._answers = Counter(
            "rung_ladder_answers_total",
            "Answers from the scoring ladder, by tier (includes aborted and replayed batches).",
            ["tier", "model_version"],
            registry=r,
        )
        self._degraded = Counter(
            "rung_degraded_total",
            "Records that left a tier for a lower one.",
            ["from_tier", "reason"],
            registry=r,
        )
        self._dead_letter = Counter(
            "rung_dead_letter_total", "Records sent to the dead-letter topic.", ["reason"], registry=r
        )
        self._review = Counter(
            "rung_review_flags_total", "Scores flagged for manual review.", registry=r
        )
        self._batches = Counter(
            "rung_batches_total", "Micro-batches formed, by why they closed.", ["reason"], registry=r
        )
        self._batch_size = Histogram(
            "rung_batch_size_records", "Records per micro-batch.", buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )  # fmt: skip
        self._stage = Histogram(
            "rung_stage_duration_seconds",
            "Time one stage of one batch took.",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._deadline_miss = Counter(
            "rung_deadline_misses_total", "Stages that ran out of the batch budget.", ["stage"],
            registry=r,
        )  # fmt: skip
        self._gc_pause = Histogram(
            "rung_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector, by generation (stream_app.live.heap).",
            ["generation"], buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self._latency = BulkHistogram(
            "rung_event_to_score_latency_seconds",
            "From a transaction's event time to its score being produced.",
            LATENCY_BUCKETS_S,
        )
        r.register(self._latency)
        self._breaker_state = Gauge(
            "rung_breaker_state",
            "1 for the state each dependency's circuit breaker is in, 0 for the others.",
            ["dependency", "state"],
            registry=r,
        )
        self._breaker_transitions = Counter(
            "rung_breaker_transitions_total",
            "Circuit breaker state changes.",
            ["dependency", "from_state", "to_state"],
            registry=r,
        )
        self._cache = Counter(
            "rung_cache_lookups_total", "Prediction cache lookups, by outcome.", ["outcome"],
            registry=r,
        )  # fmt: skip
        self._internal_errors = Counter(
            "rung_internal_errors_total",
            "Bugs caught inside the scoring core (the records were still answered), by stage.",
            ["stage"], registry=r,
        )  # fmt: skip
        self._revalidation_dropped = Counter(
            "rung_cache_revalidation_dropped_total",
            "Stale cache hits not queued for re-scoring because the queue was full.",
            registry=r,
        )  # fmt: skip
        self._integrity_failures = Counter(
            "rung_model_integrity_failures_total",
            "Run-time checks that found a model's in-memory weights changed since load, by tier.",
            ["tier"], registry=r,
        )  # fmt: skip
        for model_tier in ("primary", "fallback"):  # exposed at 0, so alerts see a series
            self._integrity_failures.labels(model_tier)
        self._shed = Counter(
            "rung_shed_records_total",
            "Records past their event-time budget, answered by the cheap tiers only, by "
            "reason (late: already past it on arrival; overload: ran past it inside rung).",
            ["reason"], registry=r,
        )  # fmt: skip
        self._lag = Gauge(
            "rung_consumer_lag_records",
            "Records between the partition's high watermark and the consumer's position.",
            ["topic", "partition"],
            registry=r,
        )
        self._aborts = Counter(
            "rung_transaction_aborts_total", "Kafka transactions aborted.", ["reason"], registry=r
        )
        self._assigned = Gauge(
            "rung_assigned_partitions", "Partitions assigned to this worker.", registry=r
        )
        self._fatal = Gauge("rung_fatal", "1 once the worker hit a fatal error.", registry=r)
        self._policy_info = Gauge("rung_policy_info", "1 for the policy version in force "
                                  "(\"none\": no policy file).", ["version"], registry=r)
        self._policy_reloads = Counter("rung_policy_reloads_total", "Policy file loads, by "
                                       "outcome (applied, refused: the old policy stays).",
                                       ["outcome"], registry=r)
        for outcome in ("applied", "refused"):  # at 0 from the start: increase() sees the first
            self._policy_reloads.labels(outcome)
        self._policy_info.labels("none").set(1)  # until a ladder's policy is loaded
        # The exactly-once feature feeds (stream_app.features): feed is transactions or labels.
        self._feature_records = Counter(
            "rung_feature_apply_records_total",
            "Records of a feed that reached the feature store's watermark, by outcome "
            "(applied, duplicate, undecodable, unattributed, genuine).",
            ["feed", "outcome"], registry=r)
        self._feature_catch_up = Counter(
            "rung_feature_catch_up_records_total",
            "Records read back from Kafka to fill a feed's gap before applying.",
            ["feed"], registry=r)
        self._feature_lag = Gauge(
            "rung_feature_apply_lag_records",
            "Committed records of a partition not yet applied to the feature store.",
            ["feed", "partition"], registry=r)
        self._feature_failures = Counter(
            "rung_feature_apply_failures_total",
            "Feature store updates that failed (retried from Kafka later).",
            ["feed", "reason"], registry=r)
        self._state_lock = threading.Lock()
        self._lag_keys: set[tuple[str, str]] = set()
        self._assigned_n = 0
        self._fatal_reason: str | None = None
        self.ladder_listener: LadderListener = MetricsListener(self)
        # Series that should read 0 rather than be absent before the first event.
        for stage in STAGES:
            self._deadline_miss.labels(stage)
        for outcome in CACHE_OUTCOMES:
            self._cache.labels(outcome)
        for reason in ("decode", "validation"):
            self._dead_letter.labels(reason)
        self._aborts.labels("abortable")

    # --- worker calls, a few per batch --------------------------------------------------
    def records_in(self, topic: str, n: int) -> None:
        self._records_in.labels(topic).inc(n)

    def scores_out(self, tier: str, model_version: str, n: int) -> None:
        self._scores.labels(_tier(tier), model_version).inc(n)

    def dead_lettered(self, reason: str, n: int = 1) -> None:
        self._dead_letter.labels(reason).inc(n)

    def reviewed(self, n: int) -> None:
        self._review.inc(n)

    def stage_duration(self, stage: str, seconds: float) -> None:
        self._stage.labels(stage).observe(seconds)

    def event_to_score_latency(self, seconds: Iterable[float] | np.ndarray) -> None:
        self._latency.observe_many(seconds)

    def gc_pause(self, generation: int, seconds: float) -> None:
        self._gc_pause.labels(str(generation)).observe(seconds)

    def transaction_aborted(self, reason: str) -> None:
        self._aborts.labels(reason).inc()

    def set_assigned_partitions(self, n: int) -> None:
        self._assigned.set(n)
        with self._state_lock:
            self._assigned_n = n

    def set_fatal(self, reason: str | None) -> None:
        self._fatal.set(0 if reason is None else 1)
        with self._state_lock:
            self._fatal_reason = reason

    def readiness(self) -> tuple[bool, str]:
        """Ready: partitions assigned and no fatal error."""
        with self._state_lock:
            fatal, assigned = self._fatal_reason, self._assigned_n
        if fatal is not None:
            return False, f"fatal: {fatal}"
        if assigned <= 0:
            return False, "no partitions assigned"
        return True, f"{assigned} partitions assigned"

    @property
    def fatal_reason(self) -> str | None:
        with self._state_lock:
            return self._fatal_reason

    # --- breakers -----------------------------------------------------------------------
    def set_breaker_state(self, dependency: str, state: str) -> None:
        """Put `dependency`'s state gauge at `state` (call once per breaker at start)."""
        for s in BREAKER_STATES if state in BREAKER_STATES else (*BREAKER_STATES, state):
            self._breaker_state.labels(dependency, s).set(1 if s == state else 0)

    def model_integrity_failure(self, tier: str) -> None:
        self._integrity_failures.labels(_tier(tier)).inc()

    def breaker_transition(self, dependency: str, from_state: str, to_state: str) -> None:
        self._breaker_transitions.labels(dependency, from_state, to_state).inc()
        self.set_breaker_state(dependency, to_state)

    # --- feature feeds (stream_app.features.applier.FeedMetrics) ---------------------------
    def feature_records(self, feed: str, outcome: str, n: int) -> None:
        self._feature_records.labels(feed, outcome).inc(n)

    def feature_catch_up(self, feed: str, n: int) -> None:
        self._feature_catch_up.labels(feed).inc(n)

    def set_feature_apply_lag(self, feed: str, partition: int, records: int) -> None:
        self._feature_lag.labels(feed, str(partition)).set(max(records, 0))

    def feature_apply_failed(self, feed: str, reason: str) -> None:
        self._feature_failures.labels(feed, reason).inc()

    # --- consumer lag -------------------------------------------------------------------
    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        key = (topic, str(partition))
        self._lag.labels(*key).set(max(lag, 0))
        with self._state_lock:
            self._lag_keys.add(key)

    def drop_consumer_lag(self, partitions: Iterable[tuple[str, int]] | None = None) -> None:
        """Forget lag series on revoke: the given (topic, partition) pairs, or all of them."""
        with self._state_lock:
            if partitions is None:
                keys = set(self._lag_keys)
            else:
                keys = {(t, str(p)) for t, p in partitions} & self._lag_keys
            self._lag_keys -= keys
        for key in keys:
            self._lag.remove(*key)

    def update_from_librdkafka_stats(self, stats_json: str | bytes) -> None:
        """Read consumer lag from a librdkafka `stats_cb` JSON document.

        Uses each partition's `consumer_lag` (-1 means unknown: skipped); the
        internal partition -1 and partitions no longer desired are dropped.
        """
        stats = orjson.loads(stats_json)
        gone: list[tuple[str, int]] = []
        for topic, tstats in (stats.get("topics") or {}).items():
            for pkey, pstats in (tstats.get("partitions") or {}).items():
                partition = int(pkey)
                if partition < 0:
                    continue
                if pstats.get("desired") is False:
                    gone.append((topic, partition))
                    continue
                lag = pstats.get("consumer_lag", -1)
                if isinstance(lag, int) and lag >= 0:
                    self.set_consumer_lag(topic, partition, lag)
        if gone:
            self.drop_consumer_lag(gone)


class MetricsListener(LadderListener, PolicyListener):
    """The core's listener hooks, recorded on a `Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def on_batch_formed(self, size: int, reason: BatchCloseReason) -> None:
        self._m._batches.labels(reason).inc()
        self._m._batch_size.observe(size)

    def on_tier_result(self, tier: str, model_version: str, count: int) -> None:
        self._m._answers.labels(_tier(tier), model_version).inc(count)

    def on_degraded(self, from_tier: str, reason: str, count: int) -> None:
        self._m._degraded.labels(_tier(from_tier), reason).inc(count)

    def on_breaker_transition(self, dependency: str, from_state: str, to_state: str) -> None:
        self._m.breaker_transition(dependency, from_state, to_state)

    def on_deadline_miss(self, stage: str) -> None:
        self._m._deadline_miss.labels(stage).inc()

    def on_cache(self, outcome: CacheOutcome, count: int) -> None:
        self._m._cache.labels(outcome).inc(count)

    def on_stage_duration(self, stage: str, seconds: float) -> None:
        self._m.stage_duration(stage, seconds)

    def on_internal_error(self, stage: str, exc: BaseException) -> None:
        self._m._internal_errors.labels(stage).inc()
        log.exception("internal_error", stage=stage, exc_info=exc)

    def on_cache_revalidation_dropped(self, count: int) -> None:
        self._m._revalidation_dropped.inc(count)

    def on_shed(self, reason: str, count: int) -> None:
        self._m._shed.labels(reason).inc(count)

    def on_policy_applied(self, version: str | None) -> None:
        self._m._policy_info.clear()
        self._m._policy_info.labels(version or "none").set(1)
        self._m._policy_reloads.labels("applied").inc()

    def on_policy_refused(self, reason: str) -> None:
        self._m._policy_reloads.labels("refused").inc()  # logged by the watcher


def _tier(tier: str) -> str:
    return str(tier)


# --- online performance: the label ⨝ score join (`stream_app.quality`) ------------------
QUALITY_OUTCOMES: Final[tuple[str, ...]] = ("tp", "fp", "fn", "tn")
QUALITY_SOURCES: Final[tuple[str, ...]] = ("scores", "labels")
QUALITY_RESULTS: Final[tuple[str, ...]] = ("pending", "joined", "duplicate", "skipped", "invalid")


class QualityMetrics:
    """Delayed-label performance per (tier, model_version), from `rung monitor`.

    Registered on a given registry (a `Metrics`' one, so one `/metrics` serves both).
    Precision, recall and alert rate are left to PromQL over a window:
    precision = tp / (tp + fp), recall = tp / (tp + fn) from `rung_labelled_scores_total`;
    alert rate = decision="alert" / all from `rung_monitored_scores_total`.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._labelled = Counter(
            "rung_labelled_scores_total",
            "Committed scores joined with their delayed label, by outcome (tp, fp, fn, tn).",
            ["tier", "model_version", "outcome"], registry=registry,
        )  # fmt: skip
        self._monitored = Counter(
            "rung_monitored_scores_total",
            "Committed scores read by the quality monitor, by decision (alert or pass).",
            ["tier", "model_version", "decision"], registry=registry,
        )  # fmt: skip
        self._records = Counter(
            "rung_quality_records_total",
            "Score and label records read by the quality monitor, by what the join did.",
            ["source", "result"], registry=registry,
        )  # fmt: skip
        self._errors = Counter(
            "rung_quality_join_errors_total",
            "Join-state calls that failed (the batch is retried from Kafka).", registry=registry,
        )  # fmt: skip
        for source in QUALITY_SOURCES:
            for result in QUALITY_RESULTS:
                self._records.labels(source, result)

    def labelled(self, tier: str, model_version: str, outcome: str, n: int = 1) -> None:
        self._labelled.labels(_tier(tier), model_version, outcome).inc(n)

    def monitored(self, tier: str, model_version: str, alert: bool, n: int = 1) -> None:
        self._monitored.labels(_tier(tier), model_version, "alert" if alert else "pass").inc(n)

    def records(self, source: str, result: str, n: int = 1) -> None:
        self._records.labels(source, result).inc(n)

    def join_error(self) -> None:
        self._errors.inc()
