"""The faust runtime (`rung run --runtime faust`) against the real local broker.

50,000 events on 6 partitions, a few deliberately broken, scored by a faust
worker that is stopped with SIGTERM part-way and replaced by a second one:
read back with `read_committed`, every event has exactly one score or one dead
letter, and the group's committed offsets reach the end of the input.

The worker runs the real CLI (`python -m stream_app.cli.app run --runtime faust`)
when the trained model artifacts are present. Until they land, it runs
`run_faust` with `_RulesStub` below (this file doubles as that entry point),
so the Kafka edge is tested either way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from scorers.deadline import Deadline
from scorers.models.defaults import FALLBACK_DIR, PRIMARY_DIR
from stream_app.devstack.pids import free_port
from stream_app.devstack.process import WorkerProcess
from stream_app.devstack.produce import produce_events
from stream_app.kafka.admin import end_offsets
from stream_app.kafka.readback import Record, read_topic
from stream_app.kafka.records import HEADER_MODEL_VERSION, HEADER_TIER, needs_review
from tests.integration.workers import exactly_once_report, simple_events
from topics.catalog import TopicNames
from topics.codec import decode_dead_letter, decode_score
from topics.schemas import Action, Score, Tier, Transaction

pytestmark = pytest.mark.integration

N_EVENTS = 50_000
BAD_EVERY = 9_973  # five deliberately broken records
REPO_ROOT = Path(__file__).resolve().parents[2]


class _RulesStub:
    """A stand-in scorer until the trained models exist: amount and merchant rules."""

    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline) -> list[Score]:
        now = time.time()
        out = []
        for t in txs:
            risky = (t.amount or 0.0) > 350.0 or t.merchant_category == "7995"
            out.append(Score(t.transaction_id, 0.8 if risky else 0.05,
                             Action.REVIEW if risky else Action.ALLOW, False, Tier.RULES,
                             "stub-rules-1", 0.5, ("stub",), 0.0, now))
        return out


def _real_models() -> bool:
    return all((d / "manifest.json").exists() for d in (PRIMARY_DIR, FALLBACK_DIR))


class _StubWorker(WorkerProcess):
    """`run_faust` with `_RulesStub`, same environment as `rung run` gets."""

    def __init__(self, bootstrap: str, redis_url: str, prefix: str, log_path: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "RUNG_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
               "RUNG_REDIS__URL": redis_url, "RUNG_TOPICS__PREFIX": prefix,
               "RUNG_KAFKA__GROUP_ID": f"{prefix}-scorer", "RUNG_METRICS__PORT": str(self.port),
               "RUNG_KAFKA__DELIVERY": "at_least_once", "RUNG_LOG__FORMAT": "json"}
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_faust_runtime"],
            cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._log_path = log_path

    def stderr(self) -> str:
        return self._log_path.read_text(errors="replace")[-4000:]


def _start(kafka_conf: dict[str, Any], redis_url: str, prefix: str,
           log_path: Path) -> WorkerProcess:
    boot = kafka_conf["bootstrap.servers"]
    if _real_models():
        return WorkerProcess(boot, redis_url, prefix, runtime="faust",
                             env={"RUNG_KAFKA__DELIVERY": "at_least_once"})
    return _StubWorker(boot, redis_url, prefix, log_path)


def _answered_count(conf: dict[str, Any], names: TopicNames) -> int:
    # The faust runtime's producer is not transactional: high watermarks count answers.
    return sum(hi for topic in (names.scores, names.dead_letter)
               for _lo, hi in end_offsets(conf, topic).values())


def _wait_answered(conf: dict[str, Any], names: TopicNames, at_least: int,
                   worker: WorkerProcess, timeout_s: float) -> int:
    end = time.monotonic() + timeout_s
    count = _answered_count(conf, names)
    while count < at_least and time.monotonic() < end:
        assert worker.proc.poll() is None, f"worker died: {worker.stderr()}"
        time.sleep(0.5)
        count = _answered_count(conf, names)
    return count


def _committed(conf: dict[str, Any], group: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**conf, "group.id": group, "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(6)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def _throughput(scores: list[Record], dead: list[Record]) -> float:
    stamps = [r.timestamp_ms for r in scores + dead]
    span_s = (max(stamps) - min(stamps)) / 1000.0
    return len(stamps) / span_s if span_s > 0 else 0.0


def test_faust_runtime_50k_exactly_one_answer_across_a_graceful_restart(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str, topic_names: TopicNames,
        tmp_path: Path) -> None:
    report = produce_events(kafka_conf, topic_names.transactions, simple_events(N_EVENTS),
                            rate_per_s=0.0, max_events=N_EVENTS, bad_every=BAD_EVERY)
    keys = [i.encode() for i in report.ids] + report.bad_keys
    assert len(keys) == N_EVENTS and report.bad == 5

    first = _start(kafka_conf, redis_url, prefix, tmp_path / "worker1.log")
    try:
        first.wait_ready()
        partial = _wait_answered(kafka_conf, topic_names, N_EVENTS // 4, first, 90.0)
        assert partial >= N_EVENTS // 4, first.stderr()
        assert first.terminate(60.0) == 0, first.stderr()
    finally:
        first.kill()
    second = _start(kafka_conf, redis_url, prefix, tmp_path / "worker2.log")
    try:
        second.wait_ready()
        _wait_answered(kafka_conf, topic_names, N_EVENTS, second, 120.0)
        metrics = second.metrics_text()
        assert second.terminate(60.0) == 0, second.stderr()
    finally:
        second.kill()

    scores = read_topic(kafka_conf, topic_names.scores)
    dead = read_topic(kafka_conf, topic_names.dead_letter)
    assert exactly_once_report(keys, scores, dead) == (0, 0)
    assert len(scores) == N_EVENTS - 5 and len(dead) == 5
    assert "rung_records_in_total" in metrics

    # Scores: keyed by transaction id, headers naming tier and model version.
    for rec in scores[:2000]:
        score = decode_score(rec.value or b"")
        assert rec.key == score.transaction_id.encode()
        assert rec.headers[HEADER_TIER] == score.tier.encode()
        assert rec.headers[HEADER_MODEL_VERSION] == score.model_version.encode()
    # Review copies: exactly the scores that need a human, once each.
    review = read_topic(kafka_conf, topic_names.review)
    want = sorted(r.key for r in scores if needs_review(decode_score(r.value or b"")))
    assert want and sorted(r.key for r in review) == want
    # Dead letters name where the broken record sits in the input.
    inputs = {r.key: r for r in read_topic(kafka_conf, topic_names.transactions,
                                           isolation="read_uncommitted")}
    for rec in dead:
        dl = decode_dead_letter(rec.value or b"")
        src = inputs[dl.original_key]
        assert (dl.source_topic, dl.source_partition, dl.source_offset) == (
            topic_names.transactions, src.partition, src.offset)
        assert dl.original_value == src.value and dl.error
    # Everything consumed is committed: a third worker would have nothing to redo.
    ends = {p: hi for p, (_lo, hi) in end_offsets(kafka_conf, topic_names.transactions).items()}
    assert _committed(kafka_conf, f"{prefix}-scorer", topic_names.transactions) == ends
    tiers = Counter(r.headers.get(HEADER_TIER, b"?").decode() for r in scores)
    print(f"\nfaust runtime: {_throughput(scores, dead):,.0f} records/s "
          f"(first score to last answer, restart included); tiers {dict(tiers)}")


def _main() -> int:
    """Entry point of `_StubWorker`: the faust runtime with the stand-in scorer."""
    from stream_app.config import load_settings
    from stream_app.faust_runtime import run_faust
    from stream_app.logs import configure_logging
    from stream_app.metrics import Metrics

    settings = load_settings()
    configure_logging(settings.log.format, settings.log.level)
    return run_faust(settings, _RulesStub(), Metrics())


if __name__ == "__main__":
    sys.exit(_main())
