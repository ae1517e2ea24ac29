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

# Sections after the table: how the network scenarios run and what `make test` runs.
NETWORK_AND_CI = """## Network faults (Toxiproxy)

The suite's stack is started with `LocalStack(run_dir, faults=True)` (by hand:
`rung stack up --faults`, or `make stack-up STACK_ARGS=--faults`). It also runs
[Toxiproxy](https://github.com/Shopify/toxiproxy) 2.12.0, built once by `make setup` with
`go install github.com/Shopify/toxiproxy/v2/cmd/server@v2.12.0` into
`~/.cache/rung/toxiproxy-2.12.0/` (`stream_app/devstack/toxiproxy.py` finds it there, or
builds it; `RUNG_TOXIPROXY_SERVER` points at another binary), on a free loopback port,
with two proxies:

- `redis`: in front of Redis; the stack's `redis_url` is the proxy's address.
- `kafka`: in front of a broker listener `PROXIED` that binds the proxy's upstream port
  and *advertises the proxy's listen address*, so a client that bootstraps through the
  proxy is sent back to it for every later connection (partition leaders, group and
  transaction coordinators). The stack's `bootstrap_servers` is the proxy's address.
  The broker's own `PLAINTEXT` listener stays direct (`direct_bootstrap_servers`).

In `tests/chaos/test_network_faults.py` only the worker goes through the proxies; the
producer and the `read_committed` read-back use the direct addresses. Each scenario:
100 warm-up records, then a stream, the fault on while it streams, heal
(`POST /reset`), every id answered exactly once, then probes until the primary answers
and every breaker is closed. A worker that exits is restarted with the same
transactional id, as its supervisor would (recorded as *worker exits*).

| Scenario | What is injected | Stream |
|---|---|---|
| `test_kafka_latency_200ms` | `latency` 200 ms on every broker → worker response, held until the stream is answered | 1,500 at 150/s |
| `test_kafka_bandwidth_throttled` | `bandwidth` 32 KB/s each way on the worker's broker link | 1,500 at 150/s |
| `test_kafka_reset_mid_transaction` | `reset_peer` (TCP RST on the next data) 4 × 1 s, 2 s apart, while transactions are open | 3,000 at 300/s |
| `test_kafka_partition_20s` | `timeout` 0 both ways for 20 s (data dropped, connections held open: a black hole), then heal | 3,000 at 300/s |
| `test_redis_latency_200ms` | `latency` 200 ms on every Redis reply (beyond the feature-store budget) | 2,000 at 500/s |
| `test_redis_reset` | `reset_peer` on every Redis connection while the stream is answered | 2,000 at 500/s |

Run them: `make chaos PYTEST_ARGS='tests/chaos/test_network_faults.py'` (one:
`make chaos PYTEST_ARGS='tests/chaos -k test_kafka_partition_20s'`). Inject by hand on a
`--faults` stack with the client:
`ToxiproxyClient(api).latency("kafka", 200)`, `.bandwidth("kafka", 32, stream="upstream")`,
`.timeout("kafka", 0)`, `.reset_peer("redis", 0)`, `.slicer("kafka", 64, 16, 10)`,
`.set_enabled("kafka", False)`, `.reset()` (the API address is in `stack.json`).

## Chaos in CI

`make test` (and so `.ci/run`) runs `-m "not chaos or ci_chaos"`: the unit and
integration tests plus the chaos rows marked `ci_chaos`, chosen to be deterministic on a
busy 2-core machine, with generous timeouts:

- model faults `feature_store_down` then `primary_error`, run first on the module's
  shared worker (it is built for them as for the full suite; `feature_store_down` after
  another row's healthy traffic can stay under its breaker's 50% of a 100-call window);
- `test_sigkill_x3`: 3 SIGKILLs 1.5–2.5 s apart, 2 worker slots, 10,000 events;
- `test_redis_stopped_and_restarted`;
- `test_kafka_latency_200ms` (through Toxiproxy).

The chaos tests run over their own stack (`faults=True`, `tests/chaos/conftest.py`), so
`make test` starts two brokers. `make chaos` still runs the whole suite. Measured on this
2-core machine (shared): the subset alone 78–147 s; `make test` 6 min 33 s of pytest
(about 4 min before the subset), well inside `.ci/run`'s 90 minutes.
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
    lines.append(NETWORK_AND_CI)
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
