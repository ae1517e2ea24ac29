"""The benchmark harness's pure pieces: no broker, no timing assertions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import gpu
from benchmarks.report import (
    Goal,
    check_document,
    evaluate_goals,
    latency_summary_ms,
    parse_vm_rss,
    percentile,
    ratio,
    result_document,
    write_document,
)
from benchmarks.run import median_run
from benchmarks.soak import rss_summary


def test_percentile_interpolates_and_handles_edges() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 100.0
    assert percentile([7.0], 99.9) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_latency_summary_orders_its_percentiles() -> None:
    s = latency_summary_ms([float(v) for v in range(1000)])
    assert s["n"] == 1000
    assert s["p50_ms"] < s["p99_ms"] < s["p999_ms"] <= s["max_ms"] == 999.0


def test_ratio_refuses_missing_or_zero_baselines() -> None:
    assert ratio(7.0, 10.0) == pytest.approx(0.7)
    assert ratio(None, 10.0) is None and ratio(5.0, 0.0) is None and ratio(5.0, None) is None


def _results(healthy: float, broken: float, hang_p99: float, half_p99: float,
             growth: float | None, *, real_ratio: float = 0.85, share: float = 0.9995,
             high_p99: float = 140.0, replay: float = 0.85, lag_slope: float = 5.0,
             recovered_s: float = 12.0) -> dict[str, object]:
    out: dict[str, object] = {
        "throughput": {"passthrough": {"records_per_s": 1000.0},
                       "healthy": {"records_per_s": healthy},
                       "breaker_open": {"records_per_s": broken},
                       "hang": {"records_per_s": 500.0, "ladder_latency": {"p99_ms": hang_p99}}},
        "realistic": {"throughput": {
            "passthrough": {"records_per_s": 2000.0},
            "healthy": {"records_per_s": 2000.0 * real_ratio, "primary_share": share}}},
        # event_to_score (the score's own stamp) is reported, not a goal
        "latency": {"load_50": {"event_to_visible": {"p99_ms": half_p99},
                                "event_to_score": {"p99_ms": 1.0}},
                    "load_90": {"event_to_visible": {"p99_ms": high_p99}}},
        "replay": {"ladder_share_of_ceiling": replay},
        "overload": {"phases": {"over": {"lag_slope_second_half_per_s": lag_slope,
                                         "offered_excess_per_s": 200.0}},
                     "recovered_after_s": recovered_s},
    }
    if growth is not None:
        out["soak"] = {"rss_growth_ratio": growth}
    return out


def test_goals_pass_and_fail_on_the_issue_limits() -> None:
    good = {g.name: g for g in evaluate_goals(_results(800, 900, 60, 65, 0.02), 0.05)}
    assert all(g.met for g in good.values())
    bad = {g.name: g for g in evaluate_goals(
        _results(600, 500, 80, 71, 0.2, real_ratio=0.5, share=0.99, high_p99=151.0,
                 replay=0.3, lag_slope=180.0, recovered_s=41.0), 0.05)}
    assert not any(g.met for g in bad.values())
    assert bad["overload 120%: lag slope / offered excess (2nd half)"].measured == \
        pytest.approx(0.9)
    assert bad["overload: seconds to near-zero lag after it"].limit == pytest.approx(30.0)
    assert bad["healthy / passthrough"].measured == pytest.approx(0.6)
    assert bad["healthy / passthrough"].limit == pytest.approx(0.8)
    assert bad["realistic: healthy / passthrough"].measured == pytest.approx(0.5)
    assert bad["realistic: healthy primary share"].limit == pytest.approx(0.999)
    assert bad["hanging primary: ladder p99 ms"].limit == pytest.approx(75.0)
    assert bad["50% load: read-back p99 ms"].limit == pytest.approx(70.0)
    assert bad["90% load: read-back p99 ms"].limit == pytest.approx(150.0)
    assert bad["replay / its passthrough"].measured == pytest.approx(0.3)


def test_ratios_over_a_broker_that_never_warmed_up_are_withheld() -> None:
    results = {**_results(800, 900, 60, 65, 0.02), "broker_warm_up": {"settled": False}}
    goals = {g.name: g for g in evaluate_goals(results, 0.05)}
    withheld = {n for n, g in goals.items() if g.withheld}
    assert withheld == {"healthy / passthrough", "realistic: healthy / passthrough",
                        "replay / its passthrough"}
    for name in withheld:  # reported, not judged
        assert goals[name].measured is not None and goals[name].met is None
        assert goals[name].to_dict()["met"] is None
    assert goals["50% load: read-back p99 ms"].met  # the rest still judged
    settled = {**results, "broker_warm_up": {"settled": True}}
    assert all(g.met and not g.withheld for g in evaluate_goals(settled, 0.05))


def test_unmeasured_goals_are_neither_met_nor_failed() -> None:
    goals = {g.name: g for g in evaluate_goals(_results(800, 900, 60, 65, None), 0.05)}
    assert goals["soak: RSS growth (end/start - 1)"].met is None
    assert Goal("x", math.nan, 1.0, True).met is None
    bare = {g.name: g for g in evaluate_goals({"throughput": {}}, 0.1)}
    assert bare["realistic: healthy / passthrough"].met is None
    assert bare["90% load: read-back p99 ms"].met is None


def test_result_document_shape_and_file(tmp_path: Path) -> None:
    goals = evaluate_goals(_results(800, 900, 60, 65, 0.0), 0.05)
    doc = result_document("bench", {"records": 10}, {"throughput": {}}, goals,
                          started_at=0.0)
    check_document(doc)
    assert set(doc["machine"]) >= {"cpu_model", "cores", "python", "torch", "librdkafka"}
    path = write_document(doc, tmp_path)
    loaded = json.loads(path.read_text())
    assert loaded["goals"][0]["met"] is True and loaded["kind"] == "bench"
    assert (tmp_path / "bench-latest.json").exists()
    with pytest.raises(ValueError):
        check_document({k: v for k, v in doc.items() if k != "machine"})


def test_median_run_picks_the_middle_and_keeps_every_rate() -> None:
    runs = [{"records_per_s": 30.0}, {"error": "boom"}, {"records_per_s": 10.0},
            {"records_per_s": 20.0}]
    chosen = median_run(runs)
    assert chosen["records_per_s"] == 20.0
    assert chosen["runs_records_per_s"] == [30.0, None, 10.0, 20.0]
    assert "error" in median_run([{"error": "boom"}])


def test_rss_parsing_and_growth() -> None:
    assert parse_vm_rss("Name:\tpython\nVmRSS:\t  123456 kB\nThreads: 9\n") == 123456
    assert parse_vm_rss("Name: x\n") is None
    s = rss_summary([(0.0, 50), (40.0, 100), (100.0, 120), (200.0, 110)], warm_up_s=30.0)
    assert s["peak_rss_kib"] == 120 and s["start_rss_kib"] == 100 and s["end_rss_kib"] == 110
    assert s["rss_growth_ratio"] == pytest.approx(0.1)


def test_gpu_script_without_cuda_says_so(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: False)
    doc = gpu.run(tmp_path / "gpu.json")
    on_disk = json.loads((tmp_path / "gpu.json").read_text())
    assert doc["status"] == on_disk["status"] == "no CUDA device"
    assert on_disk["device"] is None and "cpu_model" in on_disk["machine"]


def test_fault_model_is_caught_by_the_ladder_on_cpu(tmp_path: Path) -> None:
    """The GPU check's fault path, run on CPU: an out-of-bounds index in the forward
    raises, and every record is answered by a lower tier."""
    from benchmarks.models import model_dirs

    primary, fallback, _ = model_dirs(tmp_path)
    result = gpu.fault_child(primary, fallback, "cpu")
    assert result["caught"] is True
    assert all(b["records"] == 256 and "primary" not in b["tiers"] for b in result["batches"])


def test_explain_bench_times_served_ig_beside_autograd_on_the_same_rows() -> None:
    import numpy as np

    from benchmarks.explain import _bench_model
    from scorers.models.defaults import FALLBACK_DIR
    from scorers.models.torch_model import TorchModel

    model = TorchModel.load(FALLBACK_DIR, device="cpu")
    x = np.abs(np.random.default_rng(0).normal(size=(200, len(model.feature_names))))
    out = _bench_model(model, x.astype(np.float32), sizes=(8,), repeats=1)
    row = out["sizes"]["8"]
    for key in ("forward_us_per_record", "ig4_us_per_record", "ig4_autograd_us_per_record"):
        assert row[key] > 0
    assert row["ig4_speedup_over_autograd"] == pytest.approx(
        row["ig4_autograd_us_per_record"] / row["ig4_us_per_record"], rel=0.02)
    assert set(out["quality"]) >= {"gxi", "ig4", "ig8", "scale"}


def test_forward_benchmark_compares_served_and_file_weights_on_the_same_scores(
        tmp_path: Path) -> None:
    """A stand-in ensemble with planted subnormal weights: counted, and the three ways of
    running it agree bit for bit (timings are reported, never asserted)."""
    import torch

    from benchmarks.forward import ROWS, measure_forward
    from scorers.models.manifest import Manifest, Thresholds, sha256_file, write_manifest
    from scorers.models.nets import build_net

    names = tuple(f"f{i}" for i in range(6))
    arch = {"type": "ensemble", "n_in": 6, "n_members": 2,
            "member": {"type": "mlp", "n_in": 6, "hidden": [8], "n_steps": 2}}
    torch.manual_seed(0)
    net = build_net(arch)
    with torch.no_grad():
        net.members[0].body[0].weight[:, 0] = torch.finfo(torch.float32).tiny / 4
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    write_manifest(tmp_path, Manifest(
        name="primary", version="p-sub", weights_file="weights.pt",
        sha256=sha256_file(tmp_path / "weights.pt"), feature_names=names, arch=arch,
        thresholds=Thresholds(review=0.5, block=0.9)))
    out = measure_forward(tmp_path, repeats=1)
    assert out["model"] == "p-sub"
    assert out["subnormal_values"] == 8
    assert out["same_scores_bit_for_bit"] is True
    assert set(out["rows"]) == {str(n) for n in ROWS}
    assert all(r["as_served_us_per_record"] > 0 for r in out["rows"].values())
