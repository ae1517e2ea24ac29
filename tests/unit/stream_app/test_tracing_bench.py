"""`benchmarks.tracing` runs and reports every case (no timing assertions)."""

from __future__ import annotations

from benchmarks.tracing import run_tracing

CASES = {"off", "off_no_headers", "on_sampled", "on_ratio_0_01", "on_unsampled", "on_no_headers"}


def test_the_tracing_benchmark_reports_every_case_per_record() -> None:
    out = run_tracing(batch=16, rounds=1, healthy_records_per_s=8000.0)
    assert set(out["us_per_record"]) == CASES == set(out["us_per_record_min"])
    assert all(v > 0 for v in out["us_per_record"].values())
    assert set(out["overhead_us_per_record"]) == {c for c in CASES if c.startswith("on_")}
    assert out["healthy_us_per_record"] == 125.0
    assert set(out["overhead_share_of_healthy"]) == set(out["overhead_us_per_record"])
    assert set(out["from_message"]) == {"before_us_per_record", "now_no_headers_us_per_record",
                                        "now_with_traceparent_us_per_record"}
    assert "healthy_us_per_record" not in run_tracing(batch=4, rounds=1)
