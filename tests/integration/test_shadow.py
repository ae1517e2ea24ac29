"""A live worker with a shadow challenger on a real broker and Redis.

The challenger is the shipped primary under another version. Checked: the live path is
unchanged (every record exactly one committed score, read with read_committed), the
shadow topic holds both versions' answers for every record of the sample (all of them,
or 30% by id hash, cut in the worker before the shadow's process), each carrying the live
answer as committed, the agreement metrics match the topic, and `rung replay compare`'s
reader sees the two versions inside the shadow topic.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from scorers.models.defaults import PRIMARY_DIR
from scorers.models.manifest import load_manifest, write_manifest
from stream_app.config import load_settings
from stream_app.devstack.produce import produce_events, synthetic_events
from stream_app.kafka.readback import read_topic
from stream_app.live.shadow_parts import sampled
from stream_app.live.shadow_records import read_shadow_sides
from stream_app.live.worker import Worker
from stream_app.metrics import Metrics
from stream_app.replay.compare import compare
from stream_app.wiring import build_scorer, stop_integrity
from topics.catalog import TopicNames
from topics.codec import decode_score
from topics.schemas import Transaction

pytestmark = pytest.mark.integration
N = 3000


def challenger_dir(tmp: Path) -> tuple[Path, str]:
    out = tmp / "challenger"
    shutil.copytree(PRIMARY_DIR, out)
    (out / "reference.json").unlink(missing_ok=True)  # the primary's version, not this one
    manifest = load_manifest(out)
    version = f"{manifest.version}-challenger"
    write_manifest(out, dataclasses.replace(manifest, version=version))
    return out, version


@pytest.mark.parametrize("sample", [1.0, 0.3])
def test_a_shadow_challenger_answers_every_committed_record_off_the_live_path(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str, topic_names: TopicNames,
        tmp_path: Path, sample: float) -> None:
    model_dir, version = challenger_dir(tmp_path)
    settings = load_settings(kafka__bootstrap_servers=kafka_conf["bootstrap.servers"],
                             kafka__group_id=f"{prefix}-g", topics__prefix=prefix,
                             redis__url=redis_url, models__device="cpu",
                             metrics__enabled=False)
    settings = settings.model_copy(update={"shadow": settings.shadow.model_copy(update={
        "model_dir": model_dir, "sample": sample, "queue_batches": 10_000,
        # the worker starts behind a 3,000-record backlog: shadow it all the same
        "pause_in_backlog": False})})
    metrics = Metrics()
    ladder = build_scorer(settings, listener=metrics.ladder_listener)
    worker = Worker(settings, ladder, metrics=metrics)
    events = produce(kafka_conf, topic_names, N)
    ids = {t.transaction_id for t in events}
    # the sample (by id hash), cut in the worker before the shadow's process sees it
    taken = {t.transaction_id for t, p in zip(events, sampled(events, sample), strict=True) if p}
    assert 0 < len(taken) <= N
    runner = threading.Thread(target=worker.run, name="worker", daemon=True)
    runner.start()
    try:
        end = time.monotonic() + 300
        while worker.records_committed < N and time.monotonic() < end:
            time.sleep(0.2)
        assert worker.records_committed == N
        # the shadow runs behind the live path (at a lower priority): let it catch up
        # before stopping, so nothing is left queued at shutdown
        while shadow_answered(metrics) < len(taken) and time.monotonic() < end:
            time.sleep(0.2)
    finally:
        worker.stop()
        runner.join(timeout=60)
        stop_integrity(ladder)
        ladder.close()
    assert not runner.is_alive()

    live = {}
    for r in read_topic(kafka_conf, topic_names.scores, 120.0):
        s = decode_score(r.value or b"")
        assert s.transaction_id not in live, "a duplicated live score"
        live[s.transaction_id] = s
    assert set(live) == ids  # the live path: every record exactly once

    get = metrics.registry.get_sample_value
    dropped = {reason: get("rung_shadow_dropped_records_total", {"reason": reason}) or 0.0
               for reason in ("backlog", "queue_full", "no_features", "features_missing",
                              "model_error",
                              "producer_full", "delivery_failed", "error", "shutdown",
                              "closed")}
    shadow = read_topic(kafka_conf, topic_names.scores_shadow, 120.0)
    bodies = [orjson.loads(r.value or b"") for r in shadow]
    by_id = Counter(b["transaction_id"] for b in bodies)
    assert max(by_id.values()) == 1 and set(by_id) <= taken
    assert len(by_id) + sum(dropped.values()) == len(taken), dropped
    primary_answers = sum(1 for i, s in live.items() if s.tier == "primary" and i in taken)
    # every primary answer was shadowed; skipped only records without the champion's
    # online features (answered below the primary), never for want of room or by error
    assert len(by_id) >= primary_answers > 0
    assert {r for r, n in dropped.items() if n} <= {"no_features", "features_missing"}, dropped
    for r, body in zip(shadow, bodies, strict=True):
        mine = live[body["transaction_id"]]
        assert body["model_version"] == version and body["tier"] == "shadow"
        assert body["champion"] == {"model_version": mine.model_version, "tier": mine.tier,
                                    "score": mine.score, "action": mine.action.value}
        assert dict(r.headers)["rung-champion-version"] == mine.model_version.encode()
        if mine.tier == "primary":
            # same weights, same captured inputs: the challenger agrees with the champion
            assert body["score"] == pytest.approx(mine.score, abs=1e-5)

    champion, challenger = read_shadow_sides(kafka_conf, topic_names.scores_shadow)
    result = compare(champion, challenger)
    assert result.matched == len(by_id) and result.only_a == result.only_b == 0
    pair = {"champion_version": ladder.tier("primary").version,  # type: ignore[attr-defined]
            "challenger_version": version}
    assert get("rung_shadow_compared_total", pair) == primary_answers
    # flips by direction in the metrics = what the topic holds, per version pair
    topic_flips = Counter((b["champion"]["model_version"], b["champion"]["action"], b["action"])
                          for b in bodies if b["champion"]["action"] != b["action"])
    assert result.flipped == sum(topic_flips.values())
    for (champ, a, b), n in topic_flips.items():
        assert get("rung_shadow_decision_flips_total", {
            "champion_version": champ, "challenger_version": version, "from_action": a,
            "to_action": b}) == n
    # the same weights on the champion's own inputs: no primary answer flips
    assert not [k for k in topic_flips if k[0] == pair["champion_version"]]
    assert get("rung_shadow_score_correlation", pair) == pytest.approx(1.0, abs=1e-4)


def produce(conf: dict[str, Any], names: TopicNames, n: int) -> list[Transaction]:
    tag = f"sh-{uuid.uuid4().hex[:6]}"
    events = list(synthetic_events(n, tag))
    produce_events(conf, names.transactions, iter(events), rate_per_s=0, max_events=n)
    return events


def shadow_answered(metrics: Metrics) -> float:
    """Records the shadow has compared or dropped so far (all version pairs, reasons)."""
    return sum(sample.value for family in metrics.registry.collect()
               if family.name in ("rung_shadow_compared", "rung_shadow_dropped_records")
               for sample in family.samples if sample.name.endswith("_total"))
