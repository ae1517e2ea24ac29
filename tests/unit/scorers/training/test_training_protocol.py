"""The clean protocol: selection never sees the delay or test week; baselines; selection.json."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from scorers.lab.sim.simulator import SimConfig
from scorers.lab.training import baselines
from scorers.lab.training.data import Protocol, build_dataset
from scorers.lab.training.train import SELECTION_FILE, TrainSpec, refit, validate
from scorers.models.defaults import ARTIFACTS_DIR, FALLBACK_DIR, PRIMARY_DIR
from scorers.models.manifest import load_manifest


def test_validation_protocol_is_the_test_protocol_shifted_before_the_test_week() -> None:
    p = Protocol()
    v = p.validation()
    assert (v.train_days, v.delay_days, v.test_days) == (p.train_days, p.delay_days, p.test_days)
    assert v.test_start_day == p.train_start_day  # validation week = training week
    assert v.test_start_day + v.test_days <= p.delay_start_day  # ends before the delay week
    assert v.delay_start_day - v.train_start_day == 7 and v.train_start_day == 101


def test_no_split_used_for_selection_or_training_reaches_the_delay_or_test_week() -> None:
    ds = build_dataset(0, SimConfig(n_customers=300, n_terminals=600, n_days=140))
    day = ds.data.day
    p = Protocol()
    for split in (ds.valid_train, ds.valid, ds.train):
        assert split.rows.size and day[split.rows].max() < p.delay_start_day
    assert day[ds.valid_train.rows].max() < p.validation().delay_start_day
    assert set(day[ds.valid.rows].tolist()) <= set(range(p.train_start_day, p.delay_start_day))
    assert day[ds.test.rows].min() >= p.test_start_day
    # validation week: customers known compromised in the validation training week removed
    known = set(ds.data.customer[ds.valid_train.rows][ds.valid_train.y > 0].tolist())
    assert not known & set(ds.data.customer[ds.valid.rows].tolist())


def _toy(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 1.2).astype(np.float32)
    return x, y


def test_validate_picks_the_best_epoch_and_refit_is_deterministic() -> None:
    spec = TrainSpec("primary", {"type": "ensemble", "n_in": 3, "n_members": 2,
                                 "member": {"type": "mlp", "n_in": 3, "hidden": [8]}},
                     epochs=4, batch_size=32, lr=1e-2)
    (x, y), (xv, yv) = _toy(seed=1), _toy(seed=2)
    v = validate(spec, x, y, xv, yv, 0, torch.device("cpu"))
    assert len(v.ap_by_epoch) == 4 and v.ap_by_epoch[v.epochs - 1] == max(v.ap_by_epoch)
    a, b = (refit(spec, x, y, v.epochs, 0, torch.device("cpu")) for _ in range(2))
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key])


@pytest.mark.parametrize("name", list(baselines.GRIDS))
def test_every_baseline_selects_on_validation_and_ranks(name: str) -> None:
    pytest.importorskip("sklearn")
    (x, y), (xv, yv) = _toy(seed=1), _toy(seed=2)
    sel = baselines.select(name, x, y, xv, yv)
    assert round(sel.valid_ap, 4) == round(max(ap for _, ap in sel.grid), 4)
    assert sel.valid_ap > 0.5
    assert len(sel.grid) == int(np.prod([len(v) for v in baselines.GRIDS[name].values()]))
    s = baselines.score(baselines.fit(name, sel.params, x, y), xv)
    assert s.shape == (xv.shape[0],) and np.all((s >= 0) & (s <= 1))


def test_staged_forest_scores_match_a_forest_of_that_size() -> None:
    pytest.importorskip("sklearn")
    (x, y), (xv, _) = _toy(seed=1), _toy(seed=2)
    big = baselines.fit("random forest", {"max_depth": 5, "n_estimators": 50}, x, y)
    staged = dict(baselines._staged("random forest", big, xv, (25, 50)))
    np.testing.assert_allclose(staged[50], baselines.score(big, xv), atol=1e-6)


def test_baselines_module_does_not_import_sklearn_until_used() -> None:
    code = ("import sys, scorers.lab.training.baselines, scorers.lab.training.evaluate\n"
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_committed_selection_matches_the_committed_models() -> None:
    record = json.loads((ARTIFACTS_DIR / SELECTION_FILE).read_text())
    for name, model_dir in (("primary", PRIMARY_DIR), ("fallback", FALLBACK_DIR)):
        manifest = load_manifest(model_dir)
        chosen = record["models"][name]
        assert chosen["version"] == manifest.version
        assert chosen["epochs"] == int(manifest.metrics["epochs"])
        assert chosen["thresholds"] == {"review": manifest.thresholds.review,
                                        "block": manifest.thresholds.block}
    assert set(record["baselines"]) == set(baselines.GRIDS)
    for name, chosen in record["baselines"].items():
        assert chosen["valid_ap"] == max(c["valid_ap"] for c in chosen["grid"]), name


def test_evaluate_output_is_one_table_with_a_json_last_line() -> None:
    from scorers.lab.training.evaluate import Evaluation, TierMetrics, markdown_table, summary_json

    rows = (TierMetrics("primary", 0.9, 0.69, 0.31), TierMetrics("random forest", 0.88, 0.7, 0.3,
                                                                 baseline=True))
    ev = Evaluation(rows, {}, np.zeros(2, np.float32), 2, 1,
                    {"random forest": {"max_depth": 20, "n_estimators": 100}})
    table = markdown_table(ev).splitlines()
    assert len(table) == 4 and table[3].startswith("| *random forest* |")
    out = json.loads(summary_json(ev))
    assert out["rows"]["primary"]["kind"] == "tier" and out["primary_meets_ap_goal"] is False
    assert out["rows"]["random forest"]["kind"] == "baseline"
    assert out["baseline_params"]["random forest"]["max_depth"] == 20
