"""Hot model reload and the canary on the real stack: a `rung run` worker process whose
primary comes from a model registry, scoring a steady stream while versions are promoted,
refused and canaried. Every output is read back with read_committed."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scorers.models.canary import RollbackBounds, stable_bucket
from scorers.models.defaults import PRIMARY_DIR
from scorers.models.registry import Registry
from stream_app.devstack.process import WorkerProcess
from stream_app.devstack.produce import produce_events, synthetic_events
from stream_app.kafka.readback import Record
from tests.integration.workers import exactly_once_report, wait_for_answers
from topics.catalog import TopicNames
from topics.codec import decode_score
from topics.schemas import Score, Tier

pytestmark = pytest.mark.integration


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4] = bytes(b ^ 0xFF for b in data[mid:mid + 4])
    path.write_bytes(bytes(data))


def bad_arch_copy(src: Path, out: Path) -> Path:
    """The model with a manifest arch its weights cannot run (checksum still fine)."""
    shutil.copytree(src, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["arch"]["member"]["log1p_inputs"].append(99)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def worker_for(conf: dict[str, Any], redis_url: str, prefix: str, registry: Registry,
               ) -> WorkerProcess:
    return WorkerProcess(conf["bootstrap.servers"], redis_url, prefix,
                         env={"RUNG_MODELS__REGISTRY_DIR": str(registry.root),
                              "RUNG_MODELS__REGISTRY_POLL_S": "0.5"})


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text scrape (0.0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        got = series[len(name):]
        if got.startswith("{"):
            got = ",".join(sorted(got.strip("{}").split(",")))
        if got == want or (not want and got == ""):
            return float(value)
    return 0.0


def wait_for_metric(worker: WorkerProcess, at_least: float, name: str,
                    timeout_s: float = 120.0, **labels: str) -> None:
    """Poll the worker's /metrics until the sample reaches `at_least`."""
    end = time.monotonic() + timeout_s
    while metric(worker.metrics_text(), name, **labels) < at_least:
        assert time.monotonic() < end, f"{name}{labels} stayed below {at_least}"
        time.sleep(0.25)


def log_of(worker: WorkerProcess) -> str:
    return Path(worker._log.name).read_text(errors="replace")


def events_logged(log: str, event: str) -> list[dict[str, Any]]:
    out = []
    for line in log.splitlines():
        if f'"{event}"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def primary_batches(scores: list[Record]) -> dict[float, set[str]]:
    """Batch (its `scored_at_s`, one value per ladder batch) -> model versions of its
    primary-tier answers."""
    out: dict[float, set[str]] = defaultdict(set)
    for rec in scores:
        s = decode_score(rec.value or b"")
        if s.tier == Tier.PRIMARY:
            out[s.scored_at_s].add(s.model_version)
    return out


def produce_in_background(conf: dict[str, Any], names: TopicNames, n: int, prefix: str,
                          rate: float, **kw: Any) -> tuple[threading.Thread, list[bytes]]:
    keys: list[bytes] = []

    def run() -> None:
        report = produce_events(conf, names.transactions, synthetic_events(n, prefix, **kw),
                                rate_per_s=rate, max_events=n)
        keys.extend(i.encode() for i in report.ids)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, keys


def test_promotion_mid_stream_swaps_at_one_batch_boundary_and_a_corrupt_one_is_refused(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str, topic_names: TopicNames,
        tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    for name in ("champ-1", "champ-2", "broken-3"):
        reg.add(PRIMARY_DIR, name)  # same weights, another version name
    reg.add(bad_arch_copy(PRIMARY_DIR, tmp_path / "bad"), "bad-arch-4")  # sha256 fine
    reg.promote("champ-1")
    corrupt(reg.version_dir("broken-3") / "weights.pt")  # after any CLI check could see it
    worker = worker_for(kafka_conf, redis_url, prefix, reg)
    n = 16_000
    primary = {"name": "rung_scores_total", "tier": "primary"}
    try:
        worker.wait_ready(timeout_s=180)
        pid = worker.proc.pid
        producer, keys = produce_in_background(kafka_conf, topic_names, n, "hot", rate=400.0)
        wait_for_metric(worker, 1000, **primary, model_version="champ-1")  # a steady stream
        promoted_at = time.time()
        reg.promote("champ-2", "integration test")
        wait_for_metric(worker, 1000, **primary, model_version="champ-2")
        # a pointer naming a version whose weights no longer match (disk corruption after
        # the CLI verified it): written by hand, the CLI would refuse it
        reg.edit(lambda p: replace(p, champion="broken-3", previous=(*p.previous, p.champion),
                                   generation=p.generation + 1))
        wait_for_metric(worker, 1, "rung_model_refused_total", version="broken-3",
                        reason="integrity")
        # a checksum-clean version whose manifest arch does not fit its weights (what
        # `rung models promote --no-load-check` lets through): the worker cannot load it
        reg.promote("bad-arch-4")
        wait_for_metric(worker, 1, "rung_model_refused_total", version="bad-arch-4",
                        reason="load")
        refused_at = time.time()
        producer.join(timeout=180)
        scores, dead = wait_for_answers(kafka_conf, topic_names, n, timeout_s=240)
        metrics = worker.metrics_text()
        assert worker.proc.poll() is None and worker.proc.pid == pid  # no restart
        log = log_of(worker)
    finally:
        assert worker.terminate(timeout_s=60) == 0
    assert len(keys) == n
    assert exactly_once_report(keys, scores, dead) == (0, 0)
    assert len(scores) + len(dead) == n
    # No rebalance: the one assignment of the start, never a revocation.
    assert len(events_logged(log, "partitions_assigned")) == 1
    assert not events_logged(log, "partitions_revoked") and not events_logged(log, "partitions_lost")
    # Every batch answered by exactly one version; champ-1 batches, then champ-2 batches.
    batches = primary_batches(scores)
    assert all(len(v) == 1 for v in batches.values())
    order = [next(iter(batches[t])) for t in sorted(batches)]
    switch = order.index("champ-2")
    assert set(order[:switch]) == {"champ-1"} and set(order[switch:]) == {"champ-2"}
    assert switch >= 2 and len(order) - switch >= 2  # both sides of the swap saw traffic
    per_version = Counter(s.model_version for s in decoded(scores) if s.tier == Tier.PRIMARY)
    assert per_version["champ-1"] >= 1000 and per_version["champ-2"] >= 1000
    first_new = sorted(batches)[switch]
    assert promoted_at < first_new < promoted_at + 30
    assert not {"broken-3", "bad-arch-4"} & {v for vs in batches.values() for v in vs}
    assert sum(t > refused_at for t in batches) > 10  # champ-2 kept serving after both
    swaps = events_logged(log, "model_swapped")
    assert [s["champion"] for s in swaps] == ["champ-2"]
    refused = events_logged(log, "model_refused")
    assert [(r["version"], r["reason"]) for r in refused] == [("broken-3", "integrity"),
                                                              ("bad-arch-4", "load")]
    assert metric(metrics, "rung_model_swaps_total", role="champion") == 1
    assert metric(metrics, "rung_model_refused_total", version="broken-3", reason="integrity") == 1
    assert metric(metrics, "rung_model_refused_total", version="bad-arch-4", reason="load") == 1
    assert metric(metrics, "rung_model_live_version_info", role="champion", version="champ-2") == 1


def candidate_dir(tmp_path: Path) -> Path:
    """The primary with a miscalibrated review threshold (everything goes to review):
    loads and warms up fine, reviews far more than the champion."""
    out = tmp_path / "miscalibrated"
    shutil.copytree(PRIMARY_DIR, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["thresholds"]["review"] = 0.0
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def decoded(scores: list[Record]) -> list[Score]:
    return [decode_score(r.value or b"") for r in scores]


def test_canary_routes_the_fraction_by_customer_and_rolls_back_on_review_rate(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str, topic_names: TopicNames,
        tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    reg.add(PRIMARY_DIR, "champ-1")
    reg.promote("champ-1")
    reg.add(candidate_dir(tmp_path), "cand-2")
    fraction, customers = 0.1, 20_000
    reg.start_canary("cand-2", fraction,  # phase 1: bounds it cannot break
                     bounds=RollbackBounds(max_error_rate=1.0, max_review_rate_delta=1.0))
    worker = worker_for(kafka_conf, redis_url, prefix, reg)
    n1, n2 = 20_000, 8_000
    customer_of = {f"can-{i}": f"c{i % customers}" for i in range(n1)}
    try:
        worker.wait_ready(timeout_s=180)
        producer, keys1 = produce_in_background(kafka_conf, topic_names, n1, "can", rate=0.0,
                                                customers=customers)
        producer.join(timeout=180)
        scores1, dead1 = wait_for_answers(kafka_conf, topic_names, n1, timeout_s=240)
        # phase 2: the same candidate, with bounds a 100% review rate breaks (the error rule
        # off: on a loaded box the candidate's deadline misses could trip it first)
        reg.start_canary("cand-2", fraction, bounds=RollbackBounds(
            min_records=200, max_review_rate_delta=0.05, max_error_rate=1.0))
        end = time.monotonic() + 60  # the worker picks the new bounds up (poll 0.5 s)
        while not events_logged(log_of(worker), "model_swapped"):
            assert time.monotonic() < end, "the new canary bounds were not picked up"
            time.sleep(0.25)
        producer, keys2 = produce_in_background(kafka_conf, topic_names, n2, "roll", rate=800.0)
        end = time.monotonic() + 120
        while reg.pointer().canary is not None and time.monotonic() < end:
            time.sleep(0.5)
        producer.join(timeout=180)
        scores, dead = wait_for_answers(kafka_conf, topic_names, n1 + n2, timeout_s=240)
        metrics = worker.metrics_text()
        log = log_of(worker)
    finally:
        assert worker.terminate(timeout_s=60) == 0
    assert exactly_once_report(keys1 + keys2, scores, dead) == (0, 0)
    assert len(scores) + len(dead) == n1 + n2
    # Phase 1: each record on the model its customer's stable hash names; the fraction holds.
    on_candidate: dict[str, bool] = {}
    for s in decoded(scores1):
        if s.tier != Tier.PRIMARY:
            continue
        cust = customer_of[s.transaction_id]
        want = stable_bucket(cust) < fraction
        assert s.model_version == ("cand-2" if want else "champ-1"), s
        assert on_candidate.setdefault(cust, want) == want  # one customer, one model
    assert len(on_candidate) > 0.5 * customers  # the rest: below the primary (deadline)
    share = sum(on_candidate.values()) / len(on_candidate)
    assert abs(share - fraction) <= 0.01, share
    # Phase 2: the rule tripped on the review rate and the canary left promoted.json.
    p = reg.pointer()
    assert p.canary is None and p.champion == "champ-1"
    stop = p.events[-1]
    assert stop.action == "canary_stop" and stop.version == "cand-2"
    assert stop.reason.startswith("automatic: review_rate")
    rolled = events_logged(log, "canary_rolled_back")
    assert [(r["version"], r["reason"]) for r in rolled] == [("cand-2", "review_rate")]
    assert metric(metrics, "rung_canary_rollbacks_total", version="cand-2",
                  reason="review_rate") == 1
    assert metric(metrics, "rung_canary_fraction") == 0.0
    # After the rollback (written after the worker had already dropped the canary) every
    # primary answer is the champion's.
    after = [s for s in decoded(scores) if s.tier == Tier.PRIMARY and s.scored_at_s > stop.at_s]
    assert after and {s.model_version for s in after} == {"champ-1"}
    assert not dead1
