"""The shadow in its own process: the wire format, and the child answering as the
in-process runner does (no broker: the child runs without its shadow topic)."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from scorers.clock import FakeClock
from scorers.deadline import Deadline
from scorers.features import ONLINE_FEATURE_NAMES
from scorers.models.defaults import PRIMARY_DIR
from stream_app.config import Settings, ShadowSettings
from stream_app.devstack.produce import synthetic_events
from stream_app.kafka.records import DecodedBatch, SourceRecord
from stream_app.live import shadow
from stream_app.live.shadow_child import RecordingReport, ShadowProcess, pack, unpack
from stream_app.live.shadow_parts import sampled
from stream_app.live.shadow_tap import FeatureTap
from stream_app.pipeline import BatchOutcome
from topics.codec import decode_transaction, encode_transaction
from topics.schemas import Action, Score, Transaction

K = len(ONLINE_FEATURE_NAMES)
ACTIONS = (Action.ALLOW, Action.REVIEW, Action.BLOCK)


class Report(RecordingReport):
    """Every call, in order, as the child would report them."""


class Store:
    """Online rows whose first feature the test chooses; ids not in `online` are missing."""

    def __init__(self, online: dict[str, float]) -> None:
        self.online = online

    def fetch(self, txs: Any, timeout_s: float) -> tuple[Any, Any]:
        rows = np.zeros((len(txs), K), np.float32)
        rows[:, 0] = [self.online.get(t.transaction_id, 0.0) for t in txs]
        return rows, np.array([t.transaction_id in self.online for t in txs])

    def update(self, txs: Any, timeout_s: float) -> None:
        raise AssertionError("not used")


def batch(txs: list[Transaction], dead_first: bool = False) -> BatchOutcome:
    """A committed batch whose records decode to `txs` (after one undecodable record)."""
    records = [SourceRecord("rung.transactions", 0, i, None, encode_transaction(t))
               for i, t in enumerate(txs, start=1)]
    rows = list(range(len(txs)))
    if dead_first:
        records.insert(0, SourceRecord("rung.transactions", 0, 0, None, b"{not json"))
        rows = [i + 1 for i in rows]
    scores = [Score(t.transaction_id, (i % 7) / 7, ACTIONS[i % 3], i % 3 == 1, "primary",
                    "champion-1", 0.5, ("r",), 0.01, 1.0) for i, t in enumerate(txs)]
    return BatchOutcome(True, len(records), scores, int(dead_first), 0,
                        Deadline(FakeClock(), 0.0), 0.0, DecodedBatch(records, txs, [], rows))


def test_a_batch_travels_as_columns_and_decodes_to_the_same_records() -> None:
    txs = list(synthetic_events(50, "wire"))
    outcome = batch(txs, dead_first=True)
    fetched = txs[10:30]
    rows = np.arange(20 * K, dtype=np.float32).reshape(20, K)
    have = np.arange(20) % 2 == 0
    data = pack(12.5, outcome, [(fetched, rows, have)])
    at, n, got_txs, got_scores, taps = unpack(data, lambda v, _t: decode_transaction(v))
    assert at == 12.5 and n == 50 and got_txs == txs
    for mine, got in zip(outcome.scores, got_scores, strict=True):
        assert (got.transaction_id, got.score, got.action, got.tier, got.model_version) == \
            (mine.transaction_id, mine.score, mine.action, mine.tier, mine.model_version)
    [(ids, got_rows, got_have)] = taps
    assert ids == [t.transaction_id for t in fetched]
    assert np.array_equal(got_rows, rows) and np.array_equal(got_have, have)


def test_the_worker_sends_only_the_sample_and_answers_for_the_whole_batch() -> None:
    txs = list(synthetic_events(400, "cut"))
    outcome = batch(txs, dead_first=True)
    pick = sampled(txs, 0.1)
    # a capture sent with this batch may hold the next batch's records too
    nxt = list(synthetic_events(100, "next"))
    fetched = txs[100:] + nxt
    rows = np.arange(len(fetched) * K, dtype=np.float32).reshape(len(fetched), K)
    have = np.arange(len(fetched)) % 3 != 0
    full = pack(1.0, outcome, [(fetched, rows, have)])
    data = pack(1.0, outcome, [(fetched, rows, have)], sample=0.1)
    assert len(data) < 0.2 * len(full)
    _, n, got_txs, got_scores, [(ids, got_rows, got_have)] = unpack(
        data, lambda v, _t: decode_transaction(v))
    assert n == 400  # the child answers for every record of the batch
    assert got_txs == [t for t, p in zip(txs, pick, strict=True) if p]
    assert [s.transaction_id for s in got_scores] == [t.transaction_id for t in got_txs]
    keep = sampled(fetched, 0.1)
    assert ids == [t.transaction_id for t, p in zip(fetched, keep, strict=True) if p]
    assert any(i in {t.transaction_id for t in nxt} for i in ids)  # the next batch's kept
    assert np.array_equal(got_rows, rows[keep]) and np.array_equal(got_have, have[keep])
    # no record of a small batch in the sample: nothing but the count is sent
    none = [t for t in txs if not sampled([t], 0.1)[0]][:5]
    _, n, got_txs, got_scores, taps = unpack(pack(0.0, batch(none), [], sample=0.1),
                                             lambda v, _t: decode_transaction(v))
    assert (n, got_txs, got_scores, taps) == (5, [], [], [])


def in_process_and_in_child(settings: Settings, online: dict[str, float],
                            parts: Sequence[list[Transaction]]) -> tuple[Report, Report]:
    """The same batches through the in-process runner and through the child: what each
    reported (the runner exports after each batch, as the child does)."""
    here, tap_here = Report(), FeatureTap(Store(online))
    runner = shadow.build_runner(settings, tap_here, here, publish=False)
    assert runner is not None
    for part in parts:
        tap_here.fetch(part, 1.0)
        runner.handle(0.0, batch(part))
        runner.maybe_export()
    there, tap_there = Report(), FeatureTap(Store(online))
    child = ShadowProcess(settings, there, tap_there, publish=False).start()
    try:
        for part in parts:
            tap_there.fetch(part, 1.0)
            assert child.offer(batch(part))
    finally:
        child.stop(timeout_s=120.0)
    assert not child._proc.is_alive()
    return here, there


def test_a_sampled_child_reports_what_the_sampled_in_process_runner_reports() -> None:
    """Drift and the challenger on a 10% sample: the child, sent the sample only, bins
    and compares exactly what the in-process runner (cutting the batch itself) does."""
    txs = list(synthetic_events(6000, "sampled"))  # ~600 sampled: PSI needs 500
    online = {t.transaction_id: (i % 10) / 10 for i, t in enumerate(txs)}
    settings = Settings(shadow=ShadowSettings(model_dir=PRIMARY_DIR, drift=True, sample=0.1,
                                              queue_batches=16, drift_interval_s=1e-9,
                                              pause_in_backlog=False))
    parts = [txs[i:i + 1000] for i in range(0, len(txs), 1000)]
    here, there = in_process_and_in_child(settings, online, parts)
    strip = ("set_correlation", "set_psi")
    assert [c for c in there.calls if c[0] not in strip] == \
        [c for c in here.calls if c[0] not in strip]
    compared = sum(c[1][2] for c in here.calls if c[0] == "compared")
    assert compared == int(sampled(txs, 0.1).sum())
    last = {c[1][:2]: c[1][2] for c in here.calls if c[0] == "set_psi"}
    got = {c[1][:2]: c[1][2] for c in there.calls if c[0] == "set_psi"}
    assert last and got.keys() == last.keys() and all(math.isfinite(v) for v in last.values())
    assert got == pytest.approx(last)
    assert not [c for c in there.calls if c[0] == "dropped"]  # outside the sample: no drop


def test_the_child_reports_what_the_in_process_runner_reports() -> None:
    txs = list(synthetic_events(700, "child"))
    online = {t.transaction_id: (i % 10) / 10 for i, t in enumerate(txs[:600])}
    settings = Settings(shadow=ShadowSettings(model_dir=PRIMARY_DIR, drift=False, sample=0.5,
                                              queue_batches=10))
    here, there = in_process_and_in_child(settings, online, [txs[:350], txs[350:]])
    assert [c for c in there.calls if c[0] != "set_correlation"] == \
        [c for c in here.calls if c[0] != "set_correlation"]
    corr = [c[1][2] for c in there.calls if c[0] == "set_correlation"]
    assert corr == pytest.approx([c[1][2] for c in here.calls if c[0] == "set_correlation"])
    compared = sum(c[1][2] for c in here.calls if c[0] == "compared")
    dropped = {c[1][0]: c[1][1] for c in here.calls if c[0] == "dropped"}
    assert 250 < compared < 350  # about half of the 600 with features, by id hash
    assert set(dropped) == {"features_missing"}  # sampled among the 100 without features


def test_a_child_that_dies_turns_every_later_batch_into_a_counted_drop() -> None:
    settings = Settings(shadow=ShadowSettings(model_dir=PRIMARY_DIR, drift=False))
    report = Report()
    child = ShadowProcess(settings, report, None, publish=False).start()
    txs = list(synthetic_events(5, "dead"))
    try:
        assert child.pid is None  # nothing offered yet: no process
        assert child.offer(batch(txs))  # the feeder starts the process with it
        assert child.spawned.wait(60.0) and child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        assert child._finished.wait(120.0)  # the feeder saw the pipe close
        assert not child.offer(batch(txs))
    finally:
        child.stop(timeout_s=5.0)
    # the batch it held or had sent, then the one offered after: both counted
    assert report.calls == [("dropped", ("error", 5)), ("dropped", ("error", 5))]


def test_a_child_that_cannot_build_its_shadow_says_so(tmp_path: Any) -> None:
    (tmp_path / "manifest.json").write_text("{}")  # not a model
    settings = Settings(shadow=ShadowSettings(model_dir=tmp_path, drift=False))
    report = Report()
    child = ShadowProcess(settings, report, None, publish=False).start()
    try:
        assert child.offer(batch(list(synthetic_events(3, "bad"))))
        assert child._finished.wait(120.0)
        assert "neither a usable challenger" in child._broken
        assert not child.offer(batch(list(synthetic_events(3, "bad"))))
    finally:
        child.stop(timeout_s=5.0)
    assert report.calls == [("dropped", ("error", 3)), ("dropped", ("error", 3))]


def test_a_shadow_stopped_before_its_first_batch_never_starts_a_process() -> None:
    child = ShadowProcess(Settings(shadow=ShadowSettings(model_dir=PRIMARY_DIR)), Report(),
                          None, publish=False).start()
    child.stop(timeout_s=5.0)
    assert not child.spawned.is_set() and child.pid is None


def test_a_dropped_batch_keeps_the_newest_captures_for_the_batches_after_it() -> None:
    settings = Settings(shadow=ShadowSettings(model_dir=PRIMARY_DIR, drift=False,
                                              queue_batches=1))
    txs = list(synthetic_events(70, "drop"))
    parts = [txs[i:i + 10] for i in range(0, 70, 10)]
    tap, report = FeatureTap(Store({})), Report()
    child = ShadowProcess(settings, report, tap, publish=False)  # feeder not started
    try:
        tap.fetch(parts[0], 1.0)
        assert child.offer(batch(parts[0]))  # queued with its own capture
        for part in parts[1:]:
            tap.fetch(part, 1.0)  # scored, e.g. one batch ahead of its commit
        assert not child.offer(batch(parts[1]))  # queue full: dropped and counted
        assert [list(f[0]) for f in child._pending] == parts[-4:]
    finally:
        child.stop(timeout_s=5.0)
    assert ("dropped", ("queue_full", 10)) in report.calls


def test_a_paused_shadow_process_drops_batches_and_lets_their_captures_go() -> None:
    settings = Settings(shadow=ShadowSettings(model_dir=PRIMARY_DIR, drift=False))
    txs = list(synthetic_events(20, "pause"))
    tap, report = FeatureTap(Store({})), Report()
    child = ShadowProcess(settings, report, tap, publish=False)  # feeder not started
    try:
        child.pause()
        tap.fetch(txs[:10], 1.0)
        assert not child.offer(batch(txs[:10]))
        assert child._pending == [] and child._queue.qsize() == 0
        child.resume()
        tap.fetch(txs[10:], 1.0)
        assert child.offer(batch(txs[10:]))  # queued with its own capture only
        queued = child._queue.get_nowait()
        assert queued is not None and [list(f[0]) for f in queued[2]] == [txs[10:]]
    finally:
        child.stop(timeout_s=5.0)
    assert report.calls == [("dropped", ("paused", 10))]
