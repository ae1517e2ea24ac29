"""Policy reload without a restart, against the real local broker and Redis.

A worker runs with `RUNG_POLICY__PATH`; while events stream in, the policy file is
replaced first by an invalid one (refused: counted, the old version stays) and then
by a new version with a review rule. Every record is answered exactly once; every
score carries the policy version it was scored under; each batch (the scores sharing
one `scored_at_s`) carries one version; v1 batches all come before v2 batches; and the
review rule acts on exactly the v2 scores. Reviewed model answers carry their model's
contributions (explanations are on by default), or say that the deadline left no room."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from scorers.explain import parse_contribution
from stream_app.devstack.process import WorkerProcess
from stream_app.devstack.produce import produce_events
from stream_app.kafka.readback import read_topic
from stream_app.kafka.records import needs_review
from tests.integration.workers import exactly_once_report, simple_events, wait_for_answers
from topics.catalog import TopicNames
from topics.codec import decode_score
from topics.schemas import Score, Tier

pytestmark = pytest.mark.integration
N = 12_000
RATE_PER_S = 1_500.0  # ~8 s of traffic: the reloads land mid-stream
V2_RULE = "policy_review:it_everything"


def write_atomically(path: Path, content: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(content)
    os.replace(tmp, path)


def wait_for_metric(worker: WorkerProcess, line: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if any(m.startswith(line) for m in worker.metrics_text().splitlines()):
            return
        time.sleep(0.2)
    raise AssertionError(f"metric {line!r} never appeared")


def test_policy_reload_switches_versions_at_a_batch_boundary_with_none_lost(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str, topic_names: TopicNames,
        tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    write_atomically(path, json.dumps({"version": "it-v1"}))
    worker = WorkerProcess(kafka_conf["bootstrap.servers"], redis_url, prefix,
                           env={"RUNG_POLICY__PATH": str(path),
                                "RUNG_POLICY__POLL_INTERVAL_S": "0.2"})
    ids: list[str] = []

    def produce() -> None:
        report = produce_events(kafka_conf, topic_names.transactions, simple_events(N, prefix),
                                rate_per_s=RATE_PER_S, max_events=N)
        ids.extend(report.ids)

    try:
        worker.wait_ready()
        wait_for_metric(worker, 'rung_policy_info{version="it-v1"} 1.0')
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        time.sleep(2.0)  # some v1 batches first
        write_atomically(path, json.dumps({"version": "it-bad",
                                           "review_rules": [{"name": "x", "when": {}}]}))
        wait_for_metric(worker, 'rung_policy_reloads_total{outcome="refused"} 1.0')
        assert 'rung_policy_info{version="it-v1"} 1.0' in worker.metrics_text()
        time.sleep(1.0)
        write_atomically(path, json.dumps({"version": "it-v2", "review_rules": [
            {"name": "it_everything", "when": {"amount_at_least": 0}}]}))
        wait_for_metric(worker, 'rung_policy_info{version="it-v2"} 1.0')
        producer.join(timeout=120)
        assert not producer.is_alive() and len(ids) == N
        scores, dead = wait_for_answers(kafka_conf, topic_names, N, timeout_s=240)
    finally:
        assert worker.terminate() == 0
    keys = [i.encode() for i in ids]
    assert exactly_once_report(keys, scores, dead) == (0, 0)
    assert not dead and len(scores) == N
    decoded = [decode_score(r.value or b"") for r in scores]
    batches: dict[float, set[str | None]] = defaultdict(set)
    for s in decoded:
        batches[s.scored_at_s].add(s.policy_version)
    assert all(len(v) == 1 for v in batches.values()), "a batch mixed two policies"
    versions = {s.policy_version for s in decoded}
    assert versions == {"it-v1", "it-v2"}
    last_v1 = max(t for t, v in batches.items() if v == {"it-v1"})
    first_v2 = min(t for t, v in batches.items() if v == {"it-v2"})
    assert last_v1 < first_v2
    for s in decoded:
        ruled = V2_RULE in s.reasons
        if s.policy_version == "it-v2" and s.tier != Tier.DEFAULT:
            assert ruled and s.flag_for_review and s.action.value in ("review", "block")
        else:
            assert not ruled
    # reviewed model answers carry their model's contributions (or say why not)
    reviewed = [s for s in decoded if s.flag_for_review and s.tier in (Tier.PRIMARY,
                                                                         Tier.FALLBACK)]
    assert reviewed

    def skipped(s: Score) -> bool:  # not explained: out of deadline or of the batch budget
        return bool({f"{s.tier}_explain_deadline", f"{s.tier}_explain_budget"} & set(s.reasons))

    for s in reviewed:
        contribs = [c for c in map(parse_contribution, s.reasons) if c is not None]
        assert (1 <= len(contribs) <= 4 and {c[0] for c in contribs} == {s.tier}) \
            or skipped(s)
    for version in ("it-v1", "it-v2"):  # explanations happen under both policies
        assert any(not skipped(s) for s in reviewed if s.policy_version == version)
    for version in ("it-v1", "it-v2"):
        mine = [s for s in reviewed if s.policy_version == version]
        explained = sum(1 for s in mine if not skipped(s))
        print(f"{version}: {sum(s.policy_version == version for s in decoded)} scores, "
              f"{len(mine)} reviewed model answers, {explained} explained")
    print(f"batches: {len(batches)}")
    review = read_topic(kafka_conf, topic_names.review)
    assert sorted(r.key or b"" for r in review) == sorted(
        r.key or b"" for r in scores if needs_review(decode_score(r.value or b"")))
