"""Online performance on the real stack: the Redis join store's contract, `rung monitor`'s
loop over real score and label topics, and `rung evaluate-live` on the same topics."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, Producer
from typer.testing import CliRunner

from stream_app.metrics import Metrics, QualityMetrics
from stream_app.quality.join import RedisJoinStore
from stream_app.quality.monitor import QualityMonitor, monitor_consumer_config, run_monitor
from stream_app.quality.outcomes import OutcomeCounts, is_alert, outcome
from tests.quality_contract import JoinStoreContract, lb, s
from topics.catalog import TopicNames
from topics.codec import encode_label, encode_score
from topics.schemas import Action, Label, LabelKind, Score

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


class TestRedisStoreContract(JoinStoreContract):
    @pytest.fixture
    def store(self, redis_client: redis.Redis) -> RedisJoinStore:
        return RedisJoinStore(redis_client, namespace=f"q{uuid.uuid4().hex[:8]}", ttl_s=60)


def test_redis_state_expires(redis_client: redis.Redis) -> None:
    ns = f"q{uuid.uuid4().hex[:8]}"
    store = RedisJoinStore(redis_client, namespace=ns, ttl_s=60)
    store.offer([])
    store.offer([s("a"), s("b"), lb("b")])
    assert 0 < redis_client.ttl(f"{ns}:a") <= 60  # pending side
    assert 0 < redis_client.ttl(f"{ns}:b") <= 60  # joined marker
    assert redis_client.hgetall(f"{ns}:b") == {b"j": b"1"}


def _records(n: int, seed: int = 3) -> tuple[list[Score], list[Label]]:
    rng = random.Random(seed)
    scores, labels = [], []
    for i in range(n):
        tier = "primary" if i % 4 else "fallback"
        fraud = rng.random() < 0.2
        value = min(max(rng.gauss(0.7 if fraud else 0.3, 0.2), 0.0), 1.0)
        action = Action.BLOCK if value > 0.8 else Action.REVIEW if value > 0.5 else Action.ALLOW
        tx = f"tx-{i}"
        scores.append(Score(tx, value, action, False, tier, f"{tier}-v1", 0.9, (), 0.01,
                            1.7e9 + i))
        if i % 10:  # 10% never labelled
            labels.append(Label(tx, LabelKind.FRAUD if fraud else LabelKind.GENUINE,
                                1.7e9 + 86_400 + i, "t1", 1.7e9 + i))
    return scores, labels


def _produce(conf: dict[str, Any], names: TopicNames, scores: list[Score],
             labels: list[Label]) -> None:
    p = Producer({**conf, "enable.idempotence": True})
    # Half of the labels before the scores, half after.
    for lab in labels[::2]:
        p.produce(names.labels, key=lab.transaction_id.encode(), value=encode_label(lab))
    for sc in scores:
        p.produce(names.scores, key=sc.transaction_id.encode(), value=encode_score(sc))
    for lab in labels[1::2]:
        p.produce(names.labels, key=lab.transaction_id.encode(), value=encode_label(lab))
    assert p.flush(30) == 0


def test_monitor_counts_and_evaluate_live(kafka_conf: dict[str, Any], topic_names: TopicNames,
                                          redis_client: redis.Redis, prefix: str) -> None:
    scores, labels = _records(400)
    _produce(kafka_conf, topic_names, scores, labels)
    fraud = {lab.transaction_id: lab.is_fraud for lab in labels}
    expected: dict[tuple[str, str], OutcomeCounts] = {}
    for sc in scores:
        if sc.transaction_id in fraud:
            expected.setdefault((sc.tier, sc.model_version), OutcomeCounts()).add(
                outcome(is_alert(sc), fraud[sc.transaction_id]))

    store = RedisJoinStore(redis_client, namespace=f"{prefix}:quality", ttl_s=3600)
    group = f"{prefix}-quality"
    topics = (topic_names.scores, topic_names.labels)

    def run_once(max_s: float) -> QualityMonitor:
        mon = QualityMonitor(store, QualityMetrics(Metrics().registry), *topics)
        consumer = Consumer(monitor_consumer_config(kafka_conf, group))
        seen = 0

        def done() -> bool:  # stop once every record was read
            return seen >= len(scores) + len(labels)

        original = mon.handle

        def counting(batch: Any) -> None:
            nonlocal seen
            original(batch)
            seen += len(batch)

        mon.handle = counting  # type: ignore[method-assign]
        run_monitor(consumer, mon, topics, done, max_s=max_s)
        return mon

    mon = run_once(60.0)
    assert mon.join.counts == expected
    # Everything read again (a new group, as after a restart that lost its offsets) counts
    # nothing: the Redis join markers turn every record into a duplicate.
    group = f"{group}-again"
    again = run_once(60.0)
    assert again.join.counts == {}

    from stream_app.cli.app import app

    res = CliRunner().invoke(app, ["evaluate-live", "--prefix", prefix, "--bootstrap-servers",
                                   kafka_conf["bootstrap.servers"], "--no-cards"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert "| tier | AUC ROC | average precision | Card Precision@100 | labelled | frauds |" in (
        lines)
    out = json.loads(lines[-1])
    assert out["scores"] == 400 and out["labels"] == 360
    assert out["unlabelled_scores"] == 40
    for (tier, _), c in expected.items():
        assert out["tiers"][tier]["labelled"] == c.labelled
        assert out["tiers"][tier]["frauds"] == c.frauds
        assert 0.5 < out["tiers"][tier]["auc_roc"] <= 1.0
    assert out["tiers"]["all"]["labelled"] == 360
