"""What the chaos scenarios share: workers with fault injection on, a steady producer,
the admin endpoint, breaker metrics, and the exactly-once accounting that every
scenario ends with (each input id exactly once among committed scores + dead letters)."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from stream_app.devstack.process import WorkerProcess
from stream_app.devstack.produce import produce_events
from stream_app.kafka.readback import Record, read_topic
from stream_app.kafka.records import HEADER_TIER
from tests.integration.workers import (
    answered,
    exactly_once_report,
    simple_events,
)
from topics.catalog import TopicNames
from topics.codec import decode_dead_letter

RESULTS_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "chaos.json"
CHAOS_ENV = {"RUNG_ADMIN__FAULTS_ENABLED": "true", "RUNG_KAFKA__SESSION_TIMEOUT_S": "6",
             "RUNG_KAFKA__TRANSACTION_TIMEOUT_S": "15",
             # a 2-core box shares its CPUs with the broker: give the primary room and
             # keep batches small enough for the fixed 10 ms feature-store budget, so
             # that tiers reflect the injected faults rather than CPU contention
             "RUNG_BATCH__DEADLINE_S": "0.25", "RUNG_BATCH__MAX_RECORDS": "100",
             # the prediction cache is off by default; the cache faults need it on
             "RUNG_LADDER__CACHE_ENABLED": "true"}


@dataclass
class Outcome:
    scenario: str
    fault: str
    sent: int
    scored: int
    dead_lettered: int
    lost: int
    duplicated: int
    tiers: dict[str, int]
    command: str
    notes: dict[str, Any] = field(default_factory=dict)


class Results:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def write(self, path: Path = RESULTS_PATH) -> None:
        if not self.outcomes:
            return
        """Write this run's outcomes; rows of scenarios not run this time (a `-k` run)
        are kept from the previous file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = {o.command: asdict(o) for o in self.outcomes}
        merged: list[dict[str, Any]] = []
        if path.exists():
            for old in json.loads(path.read_text()).get("outcomes", []):
                merged.append(fresh.pop(old.get("command"), old))
        merged.extend(fresh.values())
        doc = {"suite": "chaos", "host": platform.node(), "cpus": os.cpu_count(),
               "written_at_s": time.time(), "outcomes": merged}
        path.write_text(json.dumps(doc, indent=2) + "\n")


def command_for(selector: str) -> str:
    return f"make chaos PYTEST_ARGS='tests/chaos -k {selector}'"


def chaos_worker(kafka_conf: dict[str, Any], redis_url: str, prefix: str, slot: int = 0,
                 **env: str) -> WorkerProcess:
    """A worker with faults enabled and a stable transactional id per slot, as a
    supervisor would restart it: a successor fences its killed predecessor at once."""
    return WorkerProcess(kafka_conf["bootstrap.servers"], redis_url, prefix,
                         env={**CHAOS_ENV, "RUNG_KAFKA__TRANSACTIONAL_ID": f"{prefix}-slot{slot}",
                              **env})


def admin(worker: WorkerProcess, method: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{worker.port}/admin/faults", data=data,
                                 method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def samples(worker: WorkerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(worker.metrics_text())
            for s in fam.samples}


def breaker_state(worker: WorkerProcess, dependency: str) -> str:
    for (name, labels), value in samples(worker).items():
        d = dict(labels)
        if name == "rung_breaker_state" and d["dependency"] == dependency and value == 1:
            return d["state"]
    return "unknown"


def transitions(worker: WorkerProcess, dependency: str) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for (name, labels), value in samples(worker).items():
        d = dict(labels)
        if name == "rung_breaker_transitions_total" and d["dependency"] == dependency:
            out[(d["from_state"], d["to_state"])] += int(value)
    return out


def produce(conf: dict[str, Any], names: TopicNames, n: int, id_prefix: str,
            rate: float = 0.0) -> list[bytes]:
    report = produce_events(conf, names.transactions, simple_events(n, id_prefix),
                            rate_per_s=rate, max_events=n)
    return [i.encode() for i in report.ids]


class Background:
    """Produce `n` events at `rate` on a thread; `keys` holds the ids when done."""

    def __init__(self, conf: dict[str, Any], names: TopicNames, n: int, id_prefix: str,
                 rate: float) -> None:
        self.keys: list[bytes] = []
        self._thread = threading.Thread(
            target=lambda: self.keys.extend(produce(conf, names, n, id_prefix, rate)))
        self._thread.start()

    def join(self) -> list[bytes]:
        self._thread.join()
        return self.keys


def tiers_of(scores: list[Record], id_prefix: str | None = None) -> Counter[str]:
    pre = id_prefix.encode() if id_prefix else b""
    return Counter(r.headers.get(HEADER_TIER, b"?").decode() for r in scores
                   if r.key is not None and r.key.startswith(pre))


def settle(conf: dict[str, Any], names: TopicNames, keys: list[bytes],
           timeout_s: float = 120.0) -> tuple[list[Record], list[Record], int, int]:
    """Wait for every key's answer; (scores, dead letters, missing, duplicated), counted
    over `keys` only (the topics may hold other scenarios' records)."""
    wanted = set(keys)
    end = time.monotonic() + timeout_s
    while True:
        scores, dead = answered(conf, names)
        scores = [r for r in scores if r.key in wanted]
        dead = [r for r in dead if decode_dead_letter(r.value or b"").original_key in wanted]
        missing, dups = exactly_once_report(keys, scores, dead)
        if not missing or time.monotonic() > end:
            return scores, dead, missing, dups
        time.sleep(0.5)


def wait_until(check: Any, timeout_s: float, every_s: float = 0.5) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(every_s)
    return False


def aborted_records(conf: dict[str, Any], topic: str) -> int:
    """Records that were produced but whose transaction never committed: visible to a
    read_uncommitted reader only (a worker died between produce and commit)."""
    return (len(read_topic(conf, topic, isolation="read_uncommitted"))
            - len(read_topic(conf, topic)))
