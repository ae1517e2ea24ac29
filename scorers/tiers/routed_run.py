"""The primary tier's model call when a slot has a canary: one `run_model` per model.

`routes_of` splits the rows the primary will score into (model, mask) routes: the
champion's, then, with a canary, the candidate's (by the stable hash of each record's
routing key, `scorers.models.canary`). `run_routes` runs each non-empty route through
`model_run.run_model` (its own bisection budget and timeouts, on the same bulkhead and
deadline) and merges the runs into one `ModelRun` over all rows, so the tier's fault
handling (out-of-memory split, sticky CUDA errors, per-row failures) is unchanged; it
also returns each route's forward seconds. Without a canary there is one route and
exactly one `run_model` call, as before.

The merged verdict is what the tier's breaker hears: a failure if any route failed,
else a success if any succeeded. A candidate that fails its rows therefore also
counts against the primary's breaker; the canary's rollback rule removes it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from scorers.batch_view import BatchView
from scorers.clock import Clock
from scorers.deadline import Deadline
from scorers.executor import Executor
from scorers.models.slot import ModelSlot
from scorers.ports import FloatMatrix, Model
from scorers.tier import IntArray
from scorers.tiers.model_run import ModelRun, bisect_budget, run_model

Route = tuple[Model, npt.NDArray[np.bool_]]


def routes_of(slot: ModelSlot, view: BatchView, rows: IntArray) -> list[Route]:
    champion = slot.champion
    assert champion is not None
    if slot.canary is None:
        return [(champion, np.ones(rows.size, dtype=np.bool_))]
    cand = slot.candidate_mask([view.txs[i] for i in rows.tolist()])
    return [(champion, ~cand), (slot.canary.model, cand)]


def run_routes(routes: list[Route], x: FloatMatrix, executor: Executor, deadline: Deadline,
               max_poison_rows: int, max_rows: int | None,
               clock: Clock) -> tuple[ModelRun, list[float]]:
    if len(routes) == 1:
        model = routes[0][0]
        t0 = clock.monotonic()
        run = run_model(model, x, executor, deadline, bisect_budget(len(x), max_poison_rows),
                        max_rows)
        return run, [clock.monotonic() - t0]
    merged = ModelRun(probs=np.full(len(x), np.nan))
    forward_s: list[float] = []
    verdicts = set()
    for model, sel in routes:
        pos = np.flatnonzero(sel)
        if not pos.size:
            forward_s.append(0.0)
            continue
        t0 = clock.monotonic()
        run = run_model(model, x[pos], executor, deadline,
                        bisect_budget(pos.size, max_poison_rows), max_rows)
        forward_s.append(clock.monotonic() - t0)
        merged.probs[pos] = run.probs
        merged.failures.extend((pos[part], reason) for part, reason in run.failures)
        merged.calls += run.calls
        merged.oom_rows = max(merged.oom_rows, run.oom_rows)
        if merged.sticky is None:
            merged.sticky = run.sticky
        verdicts.add(run.verdict)
    merged.verdict = ("failure" if "failure" in verdicts
                      else "success" if "success" in verdicts else "none")
    return merged, forward_s
