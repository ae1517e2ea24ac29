"""Quick ACKs on the feature store's connections: healthy drains of the realistic set
with `RUNG_REDIS__TCP_QUICK_ACK` off and on (the default), alternating (`make bench`,
`results.realistic.quick_ack`; `scorers/feature_ring.py::ack_promptly` says why).

What counts: records answered by the fallback because their batch's feature fetch
failed (`primary_features_unavailable`: a whole batch each time), the primary share,
the fetch p99 and the throughput, per setting, over the same records on the same stack.
"""

from __future__ import annotations

import os
from typing import Any

from benchmarks.e2e import Env, drain
from benchmarks.report import ratio

SETTING = "RUNG_REDIS__TCP_QUICK_ACK"
FAILED_FETCH = "primary_features_unavailable"


def measure_quick_ack(env: Env, records: int, rounds: int = 3) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    saved = os.environ.get(SETTING)
    try:
        for r in range(rounds):
            for which in ("off", "on") if r % 2 == 0 else ("on", "off"):
                os.environ[SETTING] = "true" if which == "on" else "false"
                try:
                    d = drain(env, "healthy", records)
                except Exception as exc:  # noqa: BLE001 - one failed run is reported
                    runs[which].append({"error": str(exc)[-1500:]})
                    continue
                fetch = d.get("feature_fetch") or {}
                runs[which].append({
                    "records_per_s": round(float(d["records_per_s"]), 1),
                    "primary_share": d.get("primary_share"),
                    "fallback_records": (d.get("tiers") or {}).get("fallback", 0),
                    "failed_fetch_records": (d.get("reasons") or {}).get(FAILED_FETCH, 0),
                    "fetch_p99_ms": fetch.get("p99_ms"), "batches": fetch.get("n")})
    finally:
        if saved is None:
            os.environ.pop(SETTING, None)
        else:
            os.environ[SETTING] = saved
    out: dict[str, Any] = {"records": records, "rounds": rounds, "runs": runs}
    for which, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        out[which] = {
            "failed_fetch_records": sum(r["failed_fetch_records"] for r in ok),
            "batches": sum(r["batches"] or 0 for r in ok),
            "primary_share": (sum(records - r["fallback_records"] for r in ok)
                              / (records * len(ok))) if ok else None,
            "median_records_per_s": sorted(r["records_per_s"] for r in ok)[(len(ok) - 1) // 2]
            if ok else None}
    out["throughput_on_over_off"] = ratio(out["on"]["median_records_per_s"],
                                          out["off"]["median_records_per_s"])
    return out
