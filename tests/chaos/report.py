"""Build docs/reliability.md from the chaos suite's benchmarks/results/chaos.json.

    .venv/bin/python -m tests.chaos.report [results.json] [out.md]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tests.chaos.harness import RESULTS_PATH

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"

HEADER = """# Reliability: what rung absorbs

Every row is one scenario of the chaos suite (`make chaos`, tests in `tests/chaos/`),
run against a real Kafka broker (KRaft) and a real Redis started by `rung stack`.
Faults are injected for real: worker processes are SIGKILLed, the broker is
SIGSTOPped, Redis is stopped and restarted, and model / cache / feature-store faults
are switched on at run time through the worker's `POST /admin/faults` endpoint
(enabled only with `RUNG_ADMIN__FAULTS_ENABLED=true` / `rung run --faults`).

*Sent* counts the transactions produced for the scenario; *scored* the committed
scores (read back with a `read_committed` consumer); *dead-lettered* the committed
dead letters; *lost* the ids with no committed answer; *duplicated* the extra
answers. The goal for the last two is 0. *Tiers* are from the `rung-tier` header:
for model and dependency faults, of the records sent while the fault was on; for
process and infrastructure faults, of every record of the scenario. Breaker
transitions are read from the worker's `/metrics` (`rung_breaker_transitions_total`,
`rung_breaker_state`).

Notes on the rows:
- SIGKILL: kills land at random moments (seeded). *Aborted records* counts outputs
  visible to a `read_uncommitted` reader but never committed: kills that landed
  between produce and commit. A restarted worker keeps its slot's
  `transactional.id`, so its `init_transactions` fences the dead one and aborts
  the open transaction at once; the records are consumed again (some then answer
  from the prediction cache, which the dead worker had already filled).
- A hung or slow primary is contained by the bulkhead (calls beyond its threads
  are refused at once, without a verdict), so its breaker may or may not open;
  the records still fall to the fallback within the deadline.
- NaN rows are a per-record post-validation failure, not a dependency failure:
  the breaker stays closed by design.
- Workers in the suite run with `RUNG_BATCH__DEADLINE_S=0.25` and
  `RUNG_BATCH__MAX_RECORDS=100` (see `tests/chaos/harness.py`): on 2 shared cores
  the default 50 ms deadline and 512-record batches miss the fixed 10 ms
  feature-store budget often enough to blur which tier a fault leaves.
"""


def _tiers(tiers: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(tiers.items(), key=lambda kv: -kv[1])) or "-"


def _notes(notes: dict[str, Any]) -> str:
    return "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in notes.items()) or "-"


def render(doc: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(doc["written_at_s"]))
    lines = [HEADER, f"Measured {when} on `{doc['host']}` ({doc['cpus']} CPUs).\n",
             "| Fault | Sent | Scored | Dead-lettered | Lost | Duplicated | Tiers | "
             "Breakers and notes | Reproduce |",
             "|---|---:|---:|---:|---:|---:|---|---|---|"]
    for o in doc["outcomes"]:
        lines.append(f"| {o['fault']} | {o['sent']} | {o['scored']} | {o['dead_lettered']} | "
                     f"{o['lost']} | {o['duplicated']} | {_tiers(o['tiers'])} | "
                     f"{_notes(o['notes'])} | `{o['command']}` |")
    lost = sum(o["lost"] for o in doc["outcomes"])
    dups = sum(o["duplicated"] for o in doc["outcomes"])
    lines.append(f"\nTotal over {len(doc['outcomes'])} scenarios: {lost} lost, "
                 f"{dups} duplicated.\n")
    lines.append("Regenerate: `make chaos && .venv/bin/python -m tests.chaos.report`.\n")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else RESULTS_PATH
    out = Path(argv[1]) if len(argv) > 1 else DOC_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(json.loads(src.read_text())))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
