"""The shadow challenger and live drift: after commit, off the live path (docs/shadow.md).

The worker hands every committed batch (`BatchOutcome`: the decoded transactions and
the live scores) to the shadow's `offer` on its committer thread. `offer` only puts it
on a bounded queue (`shadow.queue_batches`); when the queue is full the batch is
dropped and counted (`rung_shadow_dropped_records_total{reason="queue_full"}`), so
the shadow can never block or change a live answer. By default (`shadow.executor=
process`) all the work below runs in a child process at idle CPU priority
(`stream_app.live.shadow_child`: a thread cannot be kept off the GIL, so only a
process stays out of the live loop's way); `executor=thread` runs it on one niced
daemon thread of the worker (`rung-shadow`). `ShadowRunner`, per committed batch, on
its sample (`shadow.sample`: the records whose transaction-id hash falls under the
share, so every worker and every restart samples the same ids; the process executor
cuts the batch to it in the worker, before anything is sent to the child):

- drift: bins the sample's main features and live scores into the training
  reference's bins (`stream_app.quality.drift.DriftMonitor`) and exports the PSI every
  `shadow.drift_interval_s` (`rung_drift_psi{feature,model_version}`); the sample is
  a hash of the id, so its distributions are the batch's, with fewer counts;
- challenger (`shadow.model_dir`, loaded with `scorers.models.loading.load_model`):
  scores the sampled records on the same inputs the live primary saw, counts flips per
  (champion, challenger) version pair and by direction, keeps a rolling score
  correlation, and publishes one record per scored transaction to
  `<prefix>.scores.shadow`.

Inputs: the champion's own online features, captured. Features read from Redis after
the commit would already include the batch's own events (applied right after commit
on the same committer thread) and later ones: a customer's 1-day count would count
the transaction itself, so the challenger would see different, leaking inputs than
the champion did. Instead `FeatureTap` wraps the live ladder's feature store at build
time (`stream_app.wiring.build_scorer`) and keeps each fetch's rows (a reference to
arrays the ladder already made; one deque append per batch on the scoring thread);
the shadow matches them by transaction id (in the child: sent with the batch). A record the primary never fetched
features for (ineligible, feature store down, primary breaker open) or whose capture
aged out is not scored by an online-feature challenger (`reason="no_features"`);
one whose features were missing (`have` false) neither (`reason="features_missing"`),
as the primary would not have scored it either. An event-feature challenger (the
fallback's feature set) needs no capture.

Shadow records (`stream_app.live.shadow_records`): the challenger's `Score` plus the
live answer it was compared with, both versions in the headers. Delivery is at least once: a plain idempotent producer (acks=all), keyed by
transaction id; a batch whose records are still queued when the worker dies is lost
for the shadow (never for the live path). `rung replay compare` keeps the last record
of an id and counts the duplicates.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import structlog

from scorers.clock import Clock, SystemClock
from scorers.features import EVENT_FEATURE_NAMES, PRIMARY_FEATURE_NAMES, event_features
from scorers.models.defaults import PRIMARY_DIR
from scorers.models.manifest import ModelIntegrityError, load_manifest
from scorers.outcome import action_codes, model_confidence
from scorers.ports import BoolVector, FloatMatrix
from stream_app.config import Settings
from stream_app.live.shadow_parts import (
    BacklogGate,
    Challenger,
    RollingCorrelation,
    backlog_gate,
    sampled,
)
from stream_app.live.shadow_records import Record, shadow_records
from stream_app.live.shadow_tap import CapturedFeatures, FeatureTap
from stream_app.pipeline import BatchOutcome
from stream_app.quality.drift import DriftMonitor, Reference, load_reference
from topics.schemas import Action, Score, Transaction

log = structlog.get_logger(__name__)

SHADOW_NICE: Final = 10  # the shadow thread's nice value: CPU weight ~1/10 of a live thread
_ACTIONS: Final = (Action.ALLOW, Action.REVIEW, Action.BLOCK)


class ShadowReport(Protocol):
    """Where the shadow reports (`stream_app.shadow_metrics.ShadowMetrics`)."""

    def compared(self, champion: str, challenger: str, n: int) -> None: ...
    def flipped(self, champion: str, challenger: str, from_action: str, to_action: str,
                n: int) -> None: ...
    def set_correlation(self, champion: str, challenger: str, value: float) -> None: ...
    def dropped(self, reason: str, n: int) -> None: ...
    def set_psi(self, feature: str, model_version: str, value: float) -> None: ...


class ShadowSink(Protocol):
    def publish(self, records: Sequence[Record]) -> None: ...
    def close(self, timeout_s: float) -> None: ...


# ---- the runner --------------------------------------------------------------------
class ShadowRunner:
    """Bounded queue + one thread: drift, then the challenger, per committed batch."""

    def __init__(self, *, challenger: Challenger | None, sink: ShadowSink | None,
                 drift: DriftMonitor | None, report: ShadowReport, sample: float = 1.0,
                 queue_batches: int = 8, tap: FeatureTap | None = None,
                 drift_interval_s: float = 30.0, clock: Clock | None = None,
                 max_captured: int = 100_000, gate: BacklogGate | None = None) -> None:
        self.challenger, self.sink, self.drift, self.report = challenger, sink, drift, report
        self.sample, self.gate = sample, gate
        self.clock = clock or SystemClock()
        self.drift_interval_s = drift_interval_s
        self._queue: queue.Queue[tuple[float, BatchOutcome] | None] = queue.Queue(queue_batches)
        self._captured = CapturedFeatures(tap, max_captured)
        self._corr: dict[tuple[str, str], RollingCorrelation] = {}
        self._exported_at = self.clock.monotonic()
        self._thread: threading.Thread | None = None
        self.batches_done = 0
        self.paused = False  # `pause` / `resume`: as `ShadowProcess`

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    # -- on the committer thread: never blocks ---------------------------------------
    def offer(self, outcome: BatchOutcome) -> bool:
        if outcome.decoded is None or not outcome.scores:
            return True
        if self.paused:
            self.report.dropped("paused", len(outcome.scores))
            return False
        if self.gate is not None and self.gate.busy(outcome):
            self.report.dropped("backlog", len(outcome.scores))
            return False
        try:
            self._queue.put_nowait((self.clock.monotonic(), outcome))
            return True
        except queue.Full:
            self.report.dropped("queue_full", len(outcome.scores))
            return False

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> ShadowRunner:
        self._thread = threading.Thread(target=self._loop, name="rung-shadow", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 3.0) -> None:
        """Finish what is queued and flush the producer, all within `timeout_s` (inside
        the worker's shutdown budget); what is left is dropped (`reason="shutdown"`)."""
        end = time.monotonic() + timeout_s
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                self._queue.put(None, timeout=max(0.01, 0.8 * timeout_s))
            except queue.Full:
                pass
            thread.join(max(0.0, end - 0.2 * timeout_s - time.monotonic()))
            left = 0
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                left += len(item[1].scores) if item is not None else 0
            if left:
                self.report.dropped("shutdown", left)
        self.close_outputs(end - time.monotonic())

    def _loop(self) -> None:
        _lower_priority()
        wait_s = min(1.0, self.drift_interval_s)
        while True:
            try:
                item = self._queue.get(timeout=wait_s)
            except queue.Empty:
                self.maybe_export()
                continue
            if item is None:
                return
            try:
                self.handle(*item)
            except Exception:  # noqa: BLE001 - the shadow never stops the worker
                log.exception("shadow_batch_failed")
                self.report.dropped("error", len(item[1].scores))
            self.maybe_export()

    def capture(self, fetches: Sequence[tuple[Sequence[str], FloatMatrix, BoolVector]],
                ) -> None:
        """Feature rows captured elsewhere (the worker's tap, sent to the shadow's child
        process by `stream_app.live.shadow_child`), by transaction id."""
        self._captured.add(fetches)

    def close_outputs(self, timeout_s: float) -> None:
        """Flush the shadow topic's producer and release the challenger."""
        if self.sink is not None:
            self.sink.close(max(0.1, timeout_s))
        if self.challenger is not None:
            self.challenger.close()

    def maybe_export(self) -> None:
        now = self.clock.monotonic()
        if self.drift is not None and now - self._exported_at >= self.drift_interval_s:
            self._exported_at = now
            self.drift.export()

    # -- on the shadow thread --------------------------------------------------------
    def handle(self, offered_at_s: float, outcome: BatchOutcome) -> None:
        assert outcome.decoded is not None
        self.handle_batch(offered_at_s, outcome.decoded.txs, outcome.scores)

    def handle_batch(self, offered_at_s: float, txs: Sequence[Transaction],
                     scores: Sequence[Score]) -> None:
        """Drift and the challenger over the batch's sample (`sample`, by id hash; the
        child process gets the sample only, which passes this cut whole)."""
        if len(txs) != len(scores):
            raise ValueError(f"{len(scores)} scores for {len(txs)} transactions")
        online, captured, have = self._captured.take(
            txs, len(PRIMARY_FEATURE_NAMES) - len(EVENT_FEATURE_NAMES))
        if self.sample < 1.0:
            keep = np.flatnonzero(sampled(txs, self.sample))
            txs = [txs[i] for i in keep.tolist()]
            scores = [scores[i] for i in keep.tolist()]
            online, captured, have = online[keep], captured[keep], have[keep]
        self.batches_done += 1
        if not txs:
            return
        event = np.asarray(event_features(txs), dtype=np.float32)
        if self.drift is not None:
            self._observe_drift(event, online, have, scores)
        if self.challenger is not None:
            self._challenge(self.challenger, txs, scores, event, online, captured, have,
                            offered_at_s)

    def _observe_drift(self, event: FloatMatrix, online: FloatMatrix, have: BoolVector,
                       scores: Sequence[Score]) -> None:
        assert self.drift is not None
        cols: dict[str, np.ndarray] = {n: event[:, j] for j, n in enumerate(EVENT_FEATURE_NAMES)}
        if have.any():
            live = online[have]
            for j, n in enumerate(PRIMARY_FEATURE_NAMES[len(EVENT_FEATURE_NAMES):]):
                cols[n] = live[:, j]
        self.drift.observe_features(cols)
        versions = np.array([s.model_version for s in scores])
        values = np.array([s.score for s in scores], dtype=np.float64)
        for version in np.unique(versions).tolist():
            self.drift.observe_scores(version, values[versions == version])

    def _challenge(self, ch: Challenger, txs: Sequence[Transaction], scores: Sequence[Score],
                   event: FloatMatrix, online: FloatMatrix, captured: BoolVector,
                   have: BoolVector, offered_at_s: float) -> None:
        # `txs` is the sample already (cut in `handle_batch`)
        if ch.online:
            for reason, miss in (("no_features", ~captured),
                                 ("features_missing", captured & ~have)):
                if miss.any():
                    self.report.dropped(reason, int(miss.sum()))
            idx = np.flatnonzero(have)
        else:
            idx = np.arange(len(txs))
        if not idx.size:
            return
        x = np.hstack([event[idx], online[idx]]) if ch.online else event[idx]
        try:
            probs = np.asarray(ch.model.predict(x.astype(np.float32, copy=False)), np.float64)
            if probs.shape != (idx.size,):
                raise ValueError(f"challenger returned shape {probs.shape}")
        except Exception:  # noqa: BLE001 - a failing challenger is counted, never raised
            log.exception("shadow_challenger_failed", version=ch.version)
            self.report.dropped("model_error", int(idx.size))
            return
        ok = np.isfinite(probs)
        if not ok.all():
            self.report.dropped("model_error", int((~ok).sum()))
            idx, probs = idx[ok], probs[ok]
        codes = action_codes(probs, ch.thresholds)
        conf = model_confidence(probs)
        now_wall, lag_s = self.clock.wall(), self.clock.monotonic() - offered_at_s
        lives = [scores[i] for i in idx.tolist()]
        pairs: dict[tuple[str, str], list[int]] = {}
        for k, live in enumerate(lives):
            pairs.setdefault((live.model_version, ch.version), []).append(k)
        records = shadow_records(lives, probs.tolist(), [_ACTIONS[c] for c in codes.tolist()],
                                 conf.tolist(), version=ch.version, latency_s=lag_s,
                                 scored_at_s=now_wall)
        self._compare(scores, idx, probs, codes, pairs)
        if self.drift is not None:
            self.drift.observe_scores(ch.version, probs)
        if self.sink is not None:
            self.sink.publish(records)

    def _compare(self, scores: Sequence[Score], idx: np.ndarray, probs: np.ndarray,
                 codes: np.ndarray, pairs: dict[tuple[str, str], list[int]]) -> None:
        for (champ, chall), ks in pairs.items():
            self.report.compared(champ, chall, len(ks))
            flips: dict[tuple[str, str], int] = {}
            live_scores = np.empty(len(ks), dtype=np.float64)
            for n, k in enumerate(ks):
                live = scores[int(idx[k])]
                live_scores[n] = live.score
                to = _ACTIONS[codes[k]]
                if to is not live.action:
                    key = (live.action.value, to.value)
                    flips[key] = flips.get(key, 0) + 1
            for (a, b), n in flips.items():
                self.report.flipped(champ, chall, a, b, n)
            corr = self._corr.setdefault((champ, chall), RollingCorrelation())
            self.report.set_correlation(champ, chall, corr.add(live_scores, probs[ks]))


def _lower_priority() -> None:
    """Nice this thread (Linux schedules threads as tasks): when the CPUs are busy the
    live threads get them first, the shadow falls behind and drops (`queue_full`)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICE)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: run as is
        log.info("shadow_priority_unchanged", error=str(exc))


# ---- Kafka and wiring --------------------------------------------------------------
class KafkaShadowSink:
    """A plain idempotent producer (acks=all): at least once, keyed by transaction id."""

    def __init__(self, conf: dict[str, Any], topic: str, report: ShadowReport) -> None:
        from confluent_kafka import Producer

        self.topic, self.report = topic, report
        self._producer: Producer | None = Producer(conf)

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:
            self.report.dropped("delivery_failed", 1)

    def publish(self, records: Sequence[Record]) -> None:
        producer = self._producer
        if producer is None:
            self.report.dropped("closed", len(records))
            return
        produce, topic = producer.produce, self.topic
        for n, (key, value, headers) in enumerate(records):
            try:
                produce(topic, value, key, headers=headers, on_delivery=self._delivered)
            except BufferError:
                self.report.dropped("producer_full", len(records) - n)
                break
        producer.poll(0)

    def close(self, timeout_s: float) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        left = producer.flush(timeout_s)
        if left:
            self.report.dropped("delivery_failed", left)
        # the librdkafka handle goes with the object (as `BatchCommitter.close`)


class NoReport:
    """Reports nothing (the null `ShadowReport`)."""

    def compared(self, champion: str, challenger: str, n: int) -> None: ...
    def flipped(self, champion: str, challenger: str, from_action: str, to_action: str,
                n: int) -> None: ...
    def set_correlation(self, champion: str, challenger: str, value: float) -> None: ...
    def dropped(self, reason: str, n: int) -> None: ...
    def set_psi(self, feature: str, model_version: str, value: float) -> None: ...


def build_runner(settings: Settings, tap: FeatureTap | None, report: ShadowReport, *,
                 publish: bool = True,
                 producer_conf: Callable[[Settings], dict[str, Any]] | None = None,
                 ) -> ShadowRunner | None:
    """A `ShadowRunner` for the settings (not started); None when neither a challenger
    loads nor a drift reference is usable. `publish=False`: no shadow topic (tests)."""
    s = settings.shadow
    challenger = None
    if s.model_dir is not None:
        try:
            challenger = Challenger.load(Path(s.model_dir))
        except ValueError as exc:
            log.error("shadow_challenger_unavailable", error=str(exc))
    refs = references(settings) if s.drift else []
    if challenger is None and not refs:
        return None
    sink = None
    if challenger is not None and publish:
        conf = (producer_conf or _producer_conf)(settings)
        sink = KafkaShadowSink(conf, settings.topics.names().scores_shadow, report)
    drift = DriftMonitor(refs, report.set_psi) if refs else None
    log.info("shadow_runner_built", challenger=challenger.version if challenger else None,
             sample=s.sample, drift=[r.model_version for r in refs],
             captured_features=tap is not None)
    return ShadowRunner(challenger=challenger, sink=sink, drift=drift, report=report,
                        sample=s.sample, queue_batches=s.queue_batches, tap=tap,
                        drift_interval_s=s.drift_interval_s,
                        max_captured=(s.queue_batches + 4) * settings.batch.max_records,
                        gate=backlog_gate(settings))


def references(settings: Settings) -> list[Reference]:
    """The drift references: the primary's and the challenger's, once per version."""
    s = settings.shadow
    dirs = [Path(settings.models.primary_dir or PRIMARY_DIR)]
    if s.model_dir is not None:
        dirs.append(Path(s.model_dir))
    refs: list[Reference] = []
    for d in dirs:
        ref = _reference(d)
        if ref is not None and all(r.model_version != ref.model_version for r in refs):
            refs.append(ref)
    return refs


def _reference(model_dir: Path) -> Reference | None:
    """The directory's reference.json, if it is the one of the model in that directory."""
    try:
        ref = load_reference(model_dir)
        version = load_manifest(model_dir).version if ref is not None else ""
    except (OSError, ValueError, KeyError, TypeError, ModelIntegrityError) as exc:
        log.error("drift_reference_unreadable", model_dir=str(model_dir), error=str(exc))
        return None
    if ref is not None and ref.model_version != version:
        log.error("drift_reference_stale", model_dir=str(model_dir), model_version=version,
                  reference_version=ref.model_version)
        return None
    return ref


def _producer_conf(settings: Settings) -> dict[str, Any]:
    conf = settings.kafka.client_config()
    # few, large, compressed requests: the broker serves the live path too, and a shadow
    # record has no latency to keep
    conf.update({"enable.idempotence": True, "acks": "all", "linger.ms": 100,
                 "batch.size": 1_000_000, "batch.num.messages": 10_000,
                 "compression.type": "lz4", "queue.buffering.max.messages": 100_000})
    return conf

