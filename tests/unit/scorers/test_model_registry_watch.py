"""The worker's model watch: promoted versions loaded off the scoring thread and published
between batches, broken ones refused while the old one serves, the canary's automatic
rollback written back to the registry. Fake clock, no broker, no threads started."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ladder_fakes import (
    PRIMARY_NAMES,
    FnModel,
    VirtualTimeExecutor,
    build,
    make_tx,
    write_model_dir,
)
from prometheus_client import CollectorRegistry
from test_model_registry import corrupt

from scorers.clock import FakeClock
from scorers.deadline import Deadline
from scorers.models.canary import RollbackBounds
from scorers.models.registry import Registry
from scorers.models.torch_model import TorchModel
from scorers.ports import Model
from stream_app.live.model_watch import ModelWatch, build_model_switch
from stream_app.model_metrics import ModelMetrics
from topics.schemas import Tier


def torch_load(path: Path) -> Model:
    return TorchModel.load(path, device="cpu")


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    r = Registry(tmp_path / "registry")
    for i, name in enumerate(("v1", "v2", "v3")):
        r.add(write_model_dir(tmp_path / f"src{i}", PRIMARY_NAMES, version=name, seed=i))
    r.promote("v1")
    return r


def watch_of(reg: Registry, load=torch_load, clock: FakeClock | None = None):  # type: ignore[no-untyped-def]
    clock = clock or FakeClock()
    switch, watch = build_model_switch(reg.root, load, clock=clock, poll_s=1.0,
                                       expected_features=PRIMARY_NAMES)
    r = CollectorRegistry()
    watch.metrics = ModelMetrics(r)
    switch.stats.enabled = True  # as `for_worker` does
    return switch, watch, r


def test_a_promoted_version_is_loaded_then_published_between_batches(reg: Registry) -> None:
    switch, watch, metrics = watch_of(reg)
    assert switch.slot.versions == ("v1", "")
    assert not watch.poll_once()  # nothing changed
    reg.promote("v2")
    assert watch.poll_once()  # loaded, verified, warmed: pending
    assert switch.slot.versions == ("v1", "")  # the batch in progress keeps v1
    watch.between_batches()
    assert switch.slot.versions == ("v2", "") and switch.generation == 1
    assert metrics.get_sample_value("rung_model_swaps_total", {"role": "champion"}) == 1
    assert metrics.get_sample_value("rung_model_live_version_info",
                                    {"role": "champion", "version": "v2"}) == 1
    assert metrics.get_sample_value("rung_model_live_version_info",
                                    {"role": "champion", "version": "v1"}) is None
    reg.rollback()
    watch.poll_once()
    watch.between_batches()
    assert switch.slot.versions == ("v1", "")


def test_a_corrupted_version_is_refused_and_the_old_one_keeps_serving(reg: Registry) -> None:
    switch, watch, metrics = watch_of(reg)
    reg.promote("v2")
    corrupt(reg.version_dir("v2") / "weights.pt")  # after the CLI's check: found by the worker
    assert not watch.poll_once()
    watch.between_batches()
    assert switch.slot.versions == ("v1", "") and switch.generation == 0
    labels = {"version": "v2", "reason": "integrity"}
    assert metrics.get_sample_value("rung_model_refused_total", labels) == 1
    assert not watch.poll_once()  # the same generation is not retried
    assert metrics.get_sample_value("rung_model_refused_total", labels) == 1
    reg.promote("v3")  # the next promotion is taken
    assert watch.poll_once()
    watch.between_batches()
    assert switch.slot.versions == ("v3", "")


def test_a_version_that_fails_warm_up_is_refused(reg: Registry) -> None:
    def load(path: Path) -> Model:
        if path.name == "v2":  # loads, but answers NaN
            return FnModel("v2", PRIMARY_NAMES, fn=lambda x: np.full(len(x), np.nan))
        return torch_load(path)
    switch, watch, metrics = watch_of(reg, load)
    reg.promote("v2")
    assert not watch.poll_once()
    assert switch.slot.versions == ("v1", "")
    assert metrics.get_sample_value("rung_model_refused_total",
                                    {"version": "v2", "reason": "warm_up"}) == 1


def test_a_restart_on_a_broken_champion_serves_the_previous_one(reg: Registry) -> None:
    reg.promote("v2")
    corrupt(reg.version_dir("v2") / "weights.pt")
    switch, watch, _ = watch_of(reg)
    assert switch.slot.versions == ("v1", "")
    assert [(e.version, e.reason) for e in watch.initially_refused] == [("v2", "integrity")]


def test_a_failing_canary_is_rolled_back_and_written_back(reg: Registry) -> None:
    clock = FakeClock()

    def broken(x: np.ndarray) -> np.ndarray:  # passes the warm-up on zeros, fails on traffic
        if x[:, 0].max() > 0:
            raise RuntimeError("candidate bug")
        return np.full(len(x), 0.1)
    models: dict[str, Model] = {"v1": FnModel("v1", PRIMARY_NAMES),
                                "v2": FnModel("v2", PRIMARY_NAMES, fn=broken)}
    reg.start_canary("v2", 0.3, bounds=RollbackBounds(min_records=100, max_error_rate=0.05))
    switch, watch, metrics = watch_of(reg, lambda p: models[p.name], clock)
    assert switch.slot.versions == ("v1", "v2")  # the canary is there from the start
    ladder = build(clock, primary=switch.slot.champion, primary_switch=switch,
                   executor=VirtualTimeExecutor(clock))
    tiers: list[set[str]] = []
    for b in range(6):
        txs = [make_tx(i, customer_id=f"k{i}") for i in range(b * 100, b * 100 + 100)]
        scores = ladder.score_batch(txs, Deadline.after(clock, 0.05))
        tiers.append({s.model_version for s in scores if s.tier == Tier.PRIMARY})
        watch.between_batches()
        clock.advance(1.0)
    assert tiers[0] == {"v1"} and switch.slot.versions == ("v1", "")
    assert tiers[-1] == {"v1"}
    assert metrics.get_sample_value("rung_canary_rollbacks_total",
                                    {"version": "v2", "reason": "error_rate"}) == 1
    assert metrics.get_sample_value("rung_model_rows_total",
                                    {"model_version": "v2", "outcome": "failed"}) >= 100
    assert reg.pointer().canary is not None  # not yet written: the watch thread does that
    watch.write_rollback()
    p = reg.pointer()
    assert p.canary is None and p.events[-1].action == "canary_stop"
    assert p.events[-1].reason.startswith("automatic: error_rate")
    assert not watch.poll_once()  # its own write: nothing to load
    assert switch.slot.versions == ("v1", "")


def test_starting_a_canary_loads_only_the_candidate(reg: Registry) -> None:
    loaded: list[str] = []

    def load(path: Path) -> Model:
        loaded.append(path.name)
        return torch_load(path)
    switch, watch, metrics = watch_of(reg, load)
    champion = switch.slot.champion
    reg.start_canary("v3", 0.1)
    assert watch.poll_once()
    watch.between_batches()
    assert switch.slot.versions == ("v1", "v3") and switch.slot.champion is champion
    assert loaded == ["v1", "v3"]
    assert metrics.get_sample_value("rung_canary_fraction") == pytest.approx(0.1)
    assert metrics.get_sample_value("rung_model_swaps_total", {"role": "canary"}) == 1
    reg.stop_canary("enough")
    watch.poll_once()
    watch.between_batches()
    assert switch.slot.versions == ("v1", "")
    assert metrics.get_sample_value("rung_canary_fraction") == 0.0


def test_the_watch_thread_starts_and_stops(reg: Registry) -> None:
    _, watch, _ = watch_of(reg)
    assert isinstance(watch.start(), ModelWatch)
    watch.stop(timeout_s=5.0)
    assert watch._thread is not None and not watch._thread.is_alive()


def test_the_integrity_checker_follows_a_champion_swap(reg: Registry) -> None:
    from scorers.models.integrity import module_of
    from stream_app.wiring import (
        _integrity_follows_swaps,
        integrity_checker,
        start_integrity,
        stop_integrity,
    )

    clock = FakeClock()
    switch, watch, _ = watch_of(reg, clock=clock)
    ladder = build(clock, primary=switch.slot.champion, primary_switch=switch)
    watch.on_swap = _integrity_follows_swaps(ladder, 60.0, clock, None)
    try:
        start_integrity(ladder, 60.0, clock)
        old = integrity_checker(ladder)
        assert old is not None and old.targets[0].module is module_of(switch.slot.champion)
        reg.promote("v2")
        watch.poll_once()
        watch.between_batches()
        new = integrity_checker(ladder)
        assert new is not None and new is not old and not old.running
        assert new.targets[0].module is module_of(switch.slot.champion)
        assert switch.slot.versions[0] == "v2" and new.check_now() == {Tier.PRIMARY: True}
    finally:
        stop_integrity(ladder)


def test_for_worker_binds_metrics_enables_stats_and_starts(reg: Registry) -> None:
    from stream_app.live.model_watch import for_worker, register
    from stream_app.metrics import Metrics

    clock = FakeClock()
    switch, watch = build_model_switch(reg.root, torch_load, clock=clock, poll_s=60.0,
                                       expected_features=PRIMARY_NAMES)
    ladder = build(clock, primary=switch.slot.champion, primary_switch=switch)
    assert for_worker(ladder, None) is None and for_worker(object(), None) is None
    assert not switch.stats.enabled  # nobody drains them yet: nothing is kept
    register(ladder, watch)
    metrics = Metrics()
    try:
        assert for_worker(ladder, metrics) is watch
        assert switch.stats.enabled and watch._thread is not None and watch._thread.is_alive()
        assert metrics.registry.get_sample_value(
            "rung_model_live_version_info", {"role": "champion", "version": "v1"}) == 1
    finally:
        watch.stop()
