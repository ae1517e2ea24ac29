"""The shadow challenger off the live path: capture, sampling, comparison, dropping."""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from scorers.clock import FakeClock
from scorers.deadline import Deadline
from scorers.features import ONLINE_FEATURE_NAMES, PRIMARY_FEATURE_NAMES
from scorers.models.defaults import FALLBACK_DIR, PRIMARY_DIR
from scorers.models.manifest import Thresholds
from stream_app.config import Settings, ShadowSettings
from stream_app.kafka.records import DecodedBatch
from stream_app.live import shadow, shadow_records, shadow_start
from stream_app.live.shadow import Challenger, RollingCorrelation, ShadowRunner
from stream_app.live.shadow_records import Record
from stream_app.live.shadow_tap import CapturedFeatures, FeatureTap
from stream_app.metrics import Metrics
from stream_app.pipeline import BatchOutcome
from stream_app.quality.drift import SCORE, DriftMonitor, Histogram, Reference
from stream_app.shadow_metrics import ShadowMetrics
from stream_app.wiring import warm_transactions
from topics.codec import decode_score
from topics.schemas import Action, Score, Transaction

K = len(ONLINE_FEATURE_NAMES)
T = Thresholds(review=0.5, block=0.9)


class Report:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def compared(self, champion: str, challenger: str, n: int) -> None:
        self.calls.append(("compared", champion, challenger, n))

    def flipped(self, champion: str, challenger: str, a: str, b: str, n: int) -> None:
        self.calls.append(("flipped", champion, challenger, a, b, n))

    def set_correlation(self, champion: str, challenger: str, value: float) -> None:
        self.calls.append(("corr", champion, challenger, value))

    def dropped(self, reason: str, n: int) -> None:
        self.calls.append(("dropped", reason, n))

    def set_psi(self, feature: str, model_version: str, value: float) -> None:
        self.calls.append(("psi", feature, model_version, value))

    def dropped_by(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.calls:
            if c[0] == "dropped":
                out[c[1]] = out.get(c[1], 0) + c[2]
        return out


class Sink:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.closed = False

    def publish(self, records: Sequence[Record]) -> None:
        self.records.extend(records)

    def close(self, timeout_s: float) -> None:
        self.closed = True


class FixedModel:
    """Scores each row with its first online feature (so tests choose the answer)."""

    def __init__(self, version: str = "challenger-2", fail: bool = False) -> None:
        self.version, self.fail = version, fail
        self.feature_names = PRIMARY_FEATURE_NAMES
        self.thresholds = T
        self.seen: list[np.ndarray] = []

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.fail:
            raise RuntimeError("boom")
        self.seen.append(x)
        return x[:, len(PRIMARY_FEATURE_NAMES) - K].astype(np.float32)


class Store:
    def __init__(self, online: dict[str, float]) -> None:
        self.online = online

    def fetch(self, txs: Sequence[Transaction], timeout_s: float) -> tuple[Any, Any]:
        rows = np.zeros((len(txs), K), np.float32)
        rows[:, 0] = [self.online.get(t.transaction_id, 0.0) for t in txs]
        return rows, np.array([t.transaction_id in self.online for t in txs])

    def update(self, txs: Sequence[Transaction], timeout_s: float) -> None:
        raise AssertionError("not used")


def live(tx: Transaction, score: float, action: Action, version: str = "champion-1",
         tier: str = "primary") -> Score:
    return Score(tx.transaction_id, score, action, action is Action.REVIEW, tier, version,
                 0.5, (), 0.01, 0.0)


def outcome(txs: list[Transaction], scores: list[Score]) -> BatchOutcome:
    decoded = DecodedBatch([], txs, [], list(range(len(txs))))
    return BatchOutcome(True, len(txs), scores, 0, 0, Deadline(FakeClock(), 0.0), 0.0, decoded)


def runner(report: Report, sink: Sink | None = None, model: FixedModel | None = None,
           tap: FeatureTap | None = None, **kw: Any) -> ShadowRunner:
    ch = Challenger(model or FixedModel(), T, online=True)
    return ShadowRunner(challenger=ch, sink=sink, drift=kw.pop("drift", None), report=report,
                        tap=tap, clock=kw.pop("clock", FakeClock()), **kw)


def test_the_challenger_scores_the_champions_captured_inputs_and_counts_flips() -> None:
    txs = warm_transactions(4)
    ids = [t.transaction_id for t in txs]
    tap = FeatureTap(Store({ids[0]: 0.1, ids[1]: 0.95, ids[2]: 0.6}))  # ids[3]: missing
    tap.fetch(txs, 1.0)  # what the live primary fetched while scoring
    report, sink, model = Report(), Sink(), FixedModel()
    r = runner(report, sink, model, tap)
    scores = [live(txs[0], 0.2, Action.ALLOW), live(txs[1], 0.6, Action.REVIEW),
              live(txs[2], 0.3, Action.ALLOW), live(txs[3], 0.1, Action.ALLOW)]
    r.handle(0.0, outcome(txs, scores))
    assert [rec[0].decode() for rec in sink.records] == ids[:3]
    first = orjson.loads(sink.records[1][1])
    assert first["model_version"] == "challenger-2" and first["tier"] == "shadow"
    assert first["action"] == "block"
    assert first["champion"] == {"model_version": "champion-1", "tier": "primary",
                                 "score": 0.6, "action": "review"}
    assert dict(sink.records[1][2])["rung-champion-version"] == b"champion-1"
    assert decode_score(sink.records[1][1]).model_version == "challenger-2"
    assert shadow_records.decode_champion(sink.records[1][1]).action is Action.REVIEW
    assert ("compared", "champion-1", "challenger-2", 3) in report.calls
    flips = {(c[3], c[4]): c[5] for c in report.calls if c[0] == "flipped"}
    assert flips == {("review", "block"): 1, ("allow", "review"): 1}
    assert report.dropped_by() == {"features_missing": 1}
    corr = [c[3] for c in report.calls if c[0] == "corr"]
    assert corr and corr[-1] == pytest.approx(np.corrcoef([0.2, 0.6, 0.3], [0.1, 0.95, 0.6])[0, 1])
    # the model saw the champion's own online rows, not a re-read
    assert model.seen[0][:, len(PRIMARY_FEATURE_NAMES) - K].tolist() == pytest.approx(
        [0.1, 0.95, 0.6])


def test_records_the_primary_never_fetched_are_not_scored() -> None:
    txs = warm_transactions(3)
    report, sink = Report(), Sink()
    r = runner(report, sink, tap=FeatureTap(Store({})))
    r.handle(0.0, outcome(txs, [live(t, 0.1, Action.ALLOW) for t in txs]))
    assert sink.records == []
    assert report.dropped_by() == {"no_features": 3}


def test_offer_never_blocks_and_counts_what_it_drops() -> None:
    txs = warm_transactions(5)
    report = Report()
    r = runner(report, queue_batches=2)  # not started: nothing takes from the queue
    batch = outcome(txs, [live(t, 0.1, Action.ALLOW) for t in txs])
    assert r.offer(batch) and r.offer(batch)
    assert not r.offer(batch)
    assert report.dropped_by() == {"queue_full": 5}


def test_a_paused_runner_drops_each_batch_until_resumed() -> None:
    txs = warm_transactions(3)
    report = Report()
    r = runner(report, queue_batches=4)  # not started: offers stay queued
    batch = outcome(txs, [live(t, 0.1, Action.ALLOW) for t in txs])
    r.pause()
    assert not r.offer(batch) and r._queue.qsize() == 0
    r.resume()
    assert r.offer(batch) and r._queue.qsize() == 1
    assert report.dropped_by() == {"paused": 3}


def test_a_failing_challenger_is_counted_and_publishes_nothing() -> None:
    txs = warm_transactions(2)
    tap = FeatureTap(Store({t.transaction_id: 0.5 for t in txs}))
    tap.fetch(txs, 1.0)
    report, sink = Report(), Sink()
    r = runner(report, sink, FixedModel(fail=True), tap)
    r.handle(0.0, outcome(txs, [live(t, 0.1, Action.ALLOW) for t in txs]))
    assert sink.records == [] and report.dropped_by() == {"model_error": 2}


def test_the_thread_runs_batches_in_order_and_stop_flushes_the_sink() -> None:
    txs = warm_transactions(6)
    tap = FeatureTap(Store({t.transaction_id: 0.2 for t in txs}))
    report, sink = Report(), Sink()
    r = runner(report, sink, tap=tap).start()
    for part in (txs[:3], txs[3:]):
        tap.fetch(part, 1.0)
        assert r.offer(outcome(part, [live(t, 0.1, Action.ALLOW) for t in part]))
    r.stop(timeout_s=30.0)
    assert sink.closed and r.batches_done == 2
    assert [k.decode() for k, _, _ in sink.records] == [t.transaction_id for t in txs]


def test_sampling_is_by_id_hash_stable_and_close_to_the_share() -> None:
    txs = warm_transactions(20_000)
    picked = shadow.sampled(txs, 0.1)
    assert 0.09 < picked.mean() < 0.11
    assert (shadow.sampled(txs, 0.1) == picked).all()
    assert shadow.sampled(txs, 1.0).all() and not shadow.sampled(txs, 0.0).any()


def test_captured_features_are_used_once_and_bounded() -> None:
    txs = warm_transactions(10)
    tap = FeatureTap(Store({t.transaction_id: 1.0 for t in txs}))
    rows, have = tap.fetch(txs, 1.0)
    assert have.all() and rows.shape == (10, K)
    cap = CapturedFeatures(tap, max_records=4)
    _, captured, _ = cap.take(txs, K)
    assert captured.tolist() == [False] * 6 + [True] * 4  # the oldest were let go
    assert not cap.take(txs, K)[1].any()  # taken once


def test_rolling_correlation_forgets_old_pairs() -> None:
    c = RollingCorrelation(window=4)
    assert c.add(np.array([0.0, 1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0, 0.0])) == \
        pytest.approx(-1.0)
    assert c.add(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0, 3.0])) == \
        pytest.approx(1.0)
    assert math.isnan(RollingCorrelation().add(np.ones(3), np.arange(3.0)))


def test_drift_runs_on_the_shadow_thread_and_exports_on_the_interval() -> None:
    txs = warm_transactions(600)
    clock, report = FakeClock(), Report()
    ref = Reference("champion-1", PRIMARY_FEATURE_NAMES,
                    {"is_international": Histogram((0.5,), (0.5, 0.5)),
                     SCORE: Histogram((0.5,), (0.5, 0.5))}, 1000)
    drift = DriftMonitor([ref], report.set_psi, min_records=100)
    r = ShadowRunner(challenger=None, sink=None, drift=drift, report=report, clock=clock,
                     drift_interval_s=30.0)
    r.handle(0.0, outcome(txs, [live(t, 0.1, Action.ALLOW) for t in txs]))
    r.maybe_export()
    assert not [c for c in report.calls if c[0] == "psi"]
    clock.advance(30.0)
    r.maybe_export()
    psis = {c[1]: c[3] for c in report.calls if c[0] == "psi"}
    # every warm transaction is domestic and scored 0.1: all mass in one of two bins
    assert psis["is_international"] == pytest.approx(psis[SCORE]) and psis[SCORE] > 2.0


def test_start_builds_what_is_configured() -> None:
    assert shadow_start.start(Settings(shadow=ShadowSettings(drift=False)), object()) \
        is shadow_start.NO_SHADOW
    r = shadow_start.start(Settings(shadow=ShadowSettings(drift=True, executor="thread")), object())
    try:
        assert isinstance(r, ShadowRunner) and r.challenger is None and r.drift is not None
    finally:
        r.stop(timeout_s=5.0)


def test_the_shipped_models_load_as_challengers() -> None:
    assert Challenger.load(PRIMARY_DIR).online
    fallback = Challenger.load(FALLBACK_DIR)
    assert not fallback.online and fallback.version


def test_shadow_metrics_names_and_labels() -> None:
    m = Metrics(CollectorRegistry())
    report = shadow_start.report_for(m)
    assert report is shadow_start.report_for(m) and isinstance(report, ShadowMetrics)
    report.compared("a", "b", 3)
    report.flipped("a", "b", "allow", "review", 1)
    report.dropped("queue_full", 7)
    report.set_psi("score", "a", 0.3)
    get = m.registry.get_sample_value
    assert get("rung_shadow_compared_total", {"champion_version": "a",
                                              "challenger_version": "b"}) == 3
    assert get("rung_shadow_decision_flips_total", {
        "champion_version": "a", "challenger_version": "b", "from_action": "allow",
        "to_action": "review"}) == 1
    assert get("rung_shadow_dropped_records_total", {"reason": "queue_full"}) == 7
    assert get("rung_drift_psi", {"feature": "score", "model_version": "a"}) == 0.3


def test_a_shadow_topic_reads_as_two_sides_for_replay_compare() -> None:
    txs = warm_transactions(3)
    records = [shadow_records.shadow_record(live(t, 0.95, Action.BLOCK, version="challenger-2",
                                         tier="shadow"), live(t, 0.2, Action.ALLOW))
               for t in txs]
    values: list[bytes | None] = [v for _, v, _ in records]
    values += [records[0][1], b"not json", None]
    from stream_app.replay.compare import collect, compare

    champion = collect(shadow_records._decoded(values, shadow_records.decode_champion))
    challenger = collect(shadow_records._decoded(values, decode_score))
    assert champion.duplicates == challenger.duplicates == 1  # at least once: counted
    assert champion.skipped == challenger.skipped == 2
    result = compare(champion, challenger)
    assert result.matched == 3 and result.transitions == {(Action.ALLOW, Action.BLOCK): 3}


def test_the_benchmark_challenger_is_the_primary_under_another_version(tmp_path: Any) -> None:
    from benchmarks.shadow import challenger_dir

    out, version = challenger_dir(PRIMARY_DIR, tmp_path / "ch")
    ch = Challenger.load(out)
    assert ch.version == version != Challenger.load(PRIMARY_DIR).version and ch.online


def test_the_batch_encoder_writes_what_the_one_record_encoder_writes() -> None:
    txs = warm_transactions(2)
    champions = [live(txs[0], 0.3, Action.ALLOW), live(txs[1], 0.7, Action.REVIEW, tier="cache")]
    batch = shadow_records.shadow_records(champions, [0.95, 0.25], [Action.BLOCK, Action.ALLOW],
                                          [0.9, 0.5], version="ch-1", latency_s=0.2,
                                          scored_at_s=5.0)
    for (key, value, headers), champ, (p, a, c) in zip(
            batch, champions, [(0.95, Action.BLOCK, 0.9), (0.25, Action.ALLOW, 0.5)],
            strict=True):
        mine = Score(champ.transaction_id, p, a, a is Action.REVIEW, "shadow", "ch-1", c, (),
                     0.2, 5.0)
        one = shadow_records.shadow_record(mine, champ)
        assert (key, orjson.loads(value), headers) == (one[0], orjson.loads(one[1]), one[2])
        assert decode_score(value) == mine


def test_replay_compare_with_one_topic_compares_the_two_versions_inside_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from stream_app.cli import replay as cli
    from stream_app.replay.compare import collect

    txs = warm_transactions(4)
    values = [v for _, v, _ in shadow_records.shadow_records(
        [live(t, 0.2, Action.ALLOW) for t in txs], [0.1, 0.6, 0.95, 0.2],
        [Action.ALLOW, Action.REVIEW, Action.BLOCK, Action.ALLOW], [0.8] * 4,
        version="ch-1", latency_s=0.0, scored_at_s=0.0)]
    seen: list[str] = []

    def sides(conf: dict[str, Any], topic: str) -> tuple[Any, Any]:
        seen.append(topic)
        return (collect(shadow_records._decoded(values, shadow_records.decode_champion)),
                collect(shadow_records._decoded(values, decode_score)))

    monkeypatch.setattr(shadow_records, "read_shadow_sides", sides)
    res = CliRunner().invoke(cli.app, ["replay", "compare", "p.scores.shadow", "--json",
                                       "--bootstrap-servers", "127.0.0.1:1"])
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.output)
    assert seen == ["p.scores.shadow"]
    assert (out["matched"], out["flipped"], out["stricter"], out["looser"]) == (4, 2, 2, 0)


def test_a_reference_of_another_model_version_is_not_used(tmp_path: Any) -> None:
    from benchmarks.shadow import challenger_dir

    out, version = challenger_dir(PRIMARY_DIR, tmp_path / "ch")
    shutil.copy(PRIMARY_DIR / "reference.json", out)  # a stale one: the primary's version
    assert shadow._reference(PRIMARY_DIR) is not None
    assert shadow._reference(out) is None  # it describes the primary's version, not ch's
    r = shadow_start.start(Settings(shadow=ShadowSettings(drift=True, model_dir=out,
                                                   executor="thread")), object(),
                     producer_conf=lambda s: {"bootstrap.servers": "127.0.0.1:1"})
    try:
        assert isinstance(r, ShadowRunner) and r.drift is not None
        assert set(r.drift.references) == {Challenger.load(PRIMARY_DIR).version}
        assert r.challenger is not None and r.challenger.version == version
    finally:
        r.stop(timeout_s=1.0)


def test_the_challengers_scores_are_binned_under_its_own_reference() -> None:
    txs = warm_transactions(3)
    tap = FeatureTap(Store({t.transaction_id: 0.9 for t in txs}))
    tap.fetch(txs, 1.0)
    ref = Reference("challenger-2", PRIMARY_FEATURE_NAMES, {SCORE: Histogram((0.5,), (0.5, 0.5))},
                    10)
    drift = DriftMonitor([ref], lambda *a: None, min_records=1)
    r = runner(Report(), Sink(), tap=tap, drift=drift)
    r.handle(0.0, outcome(txs, [live(t, 0.1, Action.ALLOW) for t in txs]))
    window = drift.window("challenger-2", SCORE)
    assert window is not None and window.tolist() == [0, 3]


def test_the_shadow_stands_aside_while_the_worker_drains_a_backlog() -> None:
    txs = warm_transactions(4)
    scores = [live(t, 0.1, Action.ALLOW) for t in txs]
    full = outcome(txs, scores)  # 4 records: full when the batch maximum is 4
    part = outcome(txs[:2], scores[:2])
    gate = shadow.BacklogGate(max_records=4, full_batches=2)
    # busy until the worker has caught up once, then after 2 full batches in a row
    assert [gate.busy(b) for b in (full, full, part, full, full, full, part, full)] == \
        [True, True, False, False, True, True, False, False]
    report = Report()
    r = runner(report, queue_batches=100, gate=shadow.BacklogGate(max_records=4))
    assert not r.offer(full) and r.offer(part) and r.offer(full) and not r.offer(full)
    assert report.dropped_by() == {"backlog": 8}
    assert shadow.backlog_gate(Settings()) is not None
    assert shadow.backlog_gate(Settings(shadow=ShadowSettings(pause_in_backlog=False))) is None
