"""Replay comparison, the replay ladder's isolation and model-version check (no broker)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scorers.models.manifest import Manifest, Thresholds, write_manifest
from stream_app.replay.compare import collect, compare, decode_or_none
from stream_app.replay.run import ReplayOptions
from stream_app.replay.scoring import (
    DISABLED_DEADLINE_S,
    ModelVersionError,
    check_model_version,
    effective_deadline_s,
)
from topics.codec import encode_score
from topics.schemas import Action, Score, Tier, Transaction

A, R, B = Action.ALLOW, Action.REVIEW, Action.BLOCK


def score(tx: str, action: Action, replay_id: str | None = None) -> Score:
    return Score(tx, 0.5, action, False, Tier.PRIMARY, "v1", 0.9, (), 0.001, 1.0,
                 replay_id=replay_id)


def test_compare_counts_flips_by_direction() -> None:
    live = collect([score("t1", A), score("t2", A), score("t3", R), score("t4", B),
                    score("t5", A), score("only-live", A)])
    replay = collect([score("t1", A), score("t2", R), score("t3", B), score("t4", A),
                      score("t5", R), score("only-replay", B)])
    c = compare(live, replay)
    assert (c.matched, c.only_a, c.only_b) == (5, 1, 1)
    assert c.flipped == 4 and c.stricter == 3 and c.looser == 1
    assert c.flips()[0] == (A, R, 2)
    assert set(c.flips()) == {(A, R, 2), (R, B, 1), (B, A, 1)}
    assert c.transitions[(A, A)] == 1


def test_collect_filters_by_replay_id_and_counts_duplicates() -> None:
    side = collect([score("t1", A, "r1"), score("t1", B, "r1"), score("t2", A, "r2"), None],
                   replay_id="r1")
    assert side.actions == {"t1": B}  # the last one read wins
    assert side.duplicates == 1 and side.skipped == 2


def test_undecodable_score_records_are_skipped() -> None:
    assert decode_or_none(b"not json") is None
    assert decode_or_none(None) is None
    assert decode_or_none(b'{"transaction_id": "x"}') is None
    assert decode_or_none(encode_score(score("t", R, "r"))) == score("t", R, "r")


def _model_dir(tmp_path: Path, version: str) -> Path:
    d = tmp_path / version
    d.mkdir()
    (d / "weights.pt").write_bytes(b"weights")
    write_manifest(d, Manifest("primary", version, "weights.pt",
                               hashlib.sha256(b"weights").hexdigest(), ("a",), {"n_in": 1},
                               Thresholds(0.5, 0.9)))
    return d


def test_model_version_must_match_the_manifest(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, "primary-2025.03")
    assert check_model_version(d, "primary-2025.03") == "primary-2025.03"
    assert check_model_version(d, None) == "primary-2025.03"
    with pytest.raises(ModelVersionError, match="holds primary model version 'primary-2025.03'"):
        check_model_version(d, "primary-2024.12")
    with pytest.raises(ModelVersionError, match="cannot read"):
        check_model_version(tmp_path / "missing", None)


def test_deadline_zero_or_none_disables_it_with_a_safety_bound() -> None:
    assert effective_deadline_s(None) == DISABLED_DEADLINE_S
    assert effective_deadline_s(0) == DISABLED_DEADLINE_S
    assert effective_deadline_s(2.5) == 2.5


class RecordingStore:
    def __init__(self) -> None:
        self.updates = 0

    def fetch(self, txs: Sequence[Transaction], timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((len(txs), 2), np.float32), np.ones(len(txs), np.bool_)

    def update(self, txs: Sequence[Transaction], timeout_s: float) -> None:
        self.updates += 1


class RecordingCache:
    def __init__(self) -> None:
        self.calls = 0

    def get_many(self, keys: Sequence[str], timeout_s: float) -> list[None]:
        self.calls += 1
        return [None] * len(keys)

    def put_many(self, items: Sequence[object], timeout_s: float) -> None:
        self.calls += 1


class ConstModel:
    version = "p-1"
    feature_names = ("e", "o1", "o2")

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), 0.1, np.float32)


def test_the_replay_ladder_reads_features_but_never_writes_live_state() -> None:
    from scorers.clock import FakeClock
    from scorers.config import CacheConfig, LadderConfig
    from scorers.deadline import Deadline
    from scorers.executor import InlineExecutor
    from scorers.standard import standard_ladder

    store, cache, clock = RecordingStore(), RecordingCache(), FakeClock()

    def build(primary: object) -> Any:
        return standard_ladder(
            LadderConfig(cache=CacheConfig(enabled=True)), primary=primary, fallback=None,
            event_features=lambda txs: np.zeros((len(txs), 1), np.float32),
            feature_store=store, cache=cache, clock=clock,  # type: ignore[arg-type]
            executor=InlineExecutor(clock), event_feature_names=("e",),
            online_feature_names=("o1", "o2"), mode="replay", replay_deadline_s=5.0)

    ladder = build(ConstModel())
    txs = [Transaction(transaction_id=f"tx-{i}", event_time_s=1_750_000_000.0 + i,
                       customer_id="c", terminal_id="t", amount=10.0, currency="EUR",
                       merchant_category="5411", is_international=False,
                       has_international_history=True, account_age_days=400, channel="pos")
           for i in range(4)]
    scores = ladder.score_batch(txs, Deadline.after(clock, 5.0))
    assert {s.tier for s in scores} == {Tier.PRIMARY}  # features were read
    assert "cache" not in [t.name for t in ladder.tiers] and cache.calls == 0
    assert store.updates == 0
    assert ladder.config.feature_timeout_s >= 1.0
    # A call is slow against the replay's budgets, not the live worker's 10 ms.
    assert ladder.spec.breakers["feature_store"].slow_call_duration_s >= 1.0
    assert ladder.spec.breakers["primary"].slow_call_duration_s == 5.0
    for _ in range(20):
        assert ladder.breakers["feature_store"].acquire()
        ladder.breakers["feature_store"].on_success(0.9)
    assert ladder.breakers["feature_store"].state.value == "closed"
    ladder.close()
    no_model = build(None)
    assert no_model.breakers["primary"].state.value == "forced_open"  # no model: stays out
    no_model.close()


def test_replay_options_are_validated() -> None:
    o = ReplayOptions("r1", "rung.transactions", "rung.replay.r1.scores")
    assert o.dead_letters == "rung.replay.r1.scores.dead-letter"
    with pytest.raises(ValueError):
        ReplayOptions("r 1", "a", "b")
    with pytest.raises(ValueError):
        ReplayOptions("r1", "a", "a")
    with pytest.raises(ValueError):
        ReplayOptions("r1", "a", "b", batch_records=0)


def test_the_progress_bar_tracks_total_and_partitions() -> None:
    import io

    from rich.console import Console
    from rich.progress import Progress

    from stream_app.cli.replay import RichProgress, comparison_dict
    from stream_app.replay.range import PartitionRange
    from stream_app.replay.state import ReplayPlan

    progress = Progress(console=Console(file=io.StringIO(), force_terminal=False))
    sink = RichProgress(progress)
    plan = ReplayPlan("r", "t", "earliest", "now", (PartitionRange(0, 10, 110),
                                                    PartitionRange(1, 0, 50)))
    sink.start(plan, {0: 30, 1: 0})
    tasks = {t.description: t for t in progress.tasks}
    assert tasks["total"].total == 150 and tasks["total"].completed == 20
    sink.advance(0, 100)
    sink.advance(1, 50)
    tasks = {t.description: t for t in progress.tasks}
    assert tasks["total"].completed == 150 and tasks["p0"].completed == 100
    assert tasks["p1"].finished
    c = compare(collect([score("a", A)]), collect([score("a", B)]))
    assert comparison_dict(c)["flips"] == [{"from": "allow", "to": "block", "count": 1}]
