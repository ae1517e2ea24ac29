"""`rung replay` against the real broker and Redis: bounded, exactly once, off the live group."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from scorers.models.defaults import FALLBACK_DIR, PRIMARY_DIR
from scorers.models.manifest import load_manifest, write_manifest
from stream_app.devstack.process import WorkerProcess
from stream_app.devstack.produce import produce_events
from stream_app.kafka.commit import BatchCommitter
from stream_app.kafka.readback import Record, read_topic
from stream_app.kafka.records import HEADER_REPLAY_ID, OutRecord
from topics.catalog import TopicNames
from topics.codec import decode_score

from .workers import exactly_once_report, simple_events, wait_for_answers

pytestmark = pytest.mark.integration
T = TypeVar("T")


@pytest.fixture
def models() -> None:
    for model_dir in (PRIMARY_DIR, FALLBACK_DIR):
        if not (Path(model_dir) / "manifest.json").exists():
            pytest.skip(f"model artifacts not built: {model_dir} (train them first)")


def replay_cmd(kafka_conf: dict[str, Any], redis_url: str, prefix: str, replay_id: str,
               *args: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "RUNG_KAFKA__BOOTSTRAP_SERVERS": kafka_conf["bootstrap.servers"],
           "RUNG_REDIS__URL": redis_url, "RUNG_TOPICS__PREFIX": prefix,
           "RUNG_KAFKA__GROUP_ID": f"{prefix}-scorer", "RUNG_LOG__FORMAT": "json"}
    cmd = [sys.executable, "-m", "stream_app.cli.replay", "replay", "run", "--replay-id",
           replay_id, "--no-progress", "--json", *args]
    return cmd, env


def run_replay(kafka_conf: dict[str, Any], redis_url: str, prefix: str, replay_id: str,
               *args: str, expect_rc: int = 0) -> dict[str, Any]:
    cmd, env = replay_cmd(kafka_conf, redis_url, prefix, replay_id, *args)
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=240, check=False)
    assert done.returncode == expect_rc, done.stderr.decode()[-3000:]
    if expect_rc != 0:
        return {"stderr": done.stderr.decode()}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def retrying(call: Callable[[], T], timeout_s: float = 30.0) -> T:
    """Group calls on a fresh broker can meet a coordinator that is still loading."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException:
            if time.monotonic() > end:
                raise
            time.sleep(0.5)


def committed(kafka_conf: dict[str, Any], group: str, topic: str) -> dict[int, tuple[int, str]]:
    consumer = Consumer({**kafka_conf, "group.id": group, "enable.auto.commit": False})
    try:
        tps = retrying(lambda: consumer.committed(
            [TopicPartition(topic, p) for p in range(6)], timeout=30))
        return {tp.partition: (tp.offset, tp.metadata or "") for tp in tps}
    finally:
        consumer.close()


def produce(kafka_conf: dict[str, Any], topic: str, n: int, tag: str,
            bad_every: int = 0) -> list[bytes]:
    report = produce_events(kafka_conf, topic, simple_events(n, tag), rate_per_s=0,
                            max_events=n, bad_every=bad_every)
    return [i.encode() for i in report.ids] + report.bad_keys


def replay_keys(kafka_conf: dict[str, Any], topic: str) -> tuple[list[Record], list[Record]]:
    return read_topic(kafka_conf, topic), read_topic(kafka_conf, f"{topic}.dead-letter")


@pytest.mark.usefixtures("models")
def test_a_time_range_replays_exactly_while_the_live_worker_runs(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str,
        topic_names: TopicNames) -> None:
    tx = topic_names.transactions
    # An idle live group with committed offsets: nothing may move them.
    idle = f"{prefix}-idle-live"
    before = produce(kafka_conf, tx, 3_000, "before")
    c = Consumer({**kafka_conf, "group.id": idle, "enable.auto.commit": False})
    retrying(lambda: c.commit(offsets=[TopicPartition(tx, p, 5) for p in range(6)],
                              asynchronous=False))
    c.close()
    worker = WorkerProcess(kafka_conf["bootstrap.servers"], redis_url, prefix)
    try:
        worker.wait_ready()
        time.sleep(0.3)
        start_ms = int(time.time() * 1000)
        time.sleep(0.3)
        inside = produce(kafka_conf, tx, 8_000, "inside", bad_every=1_000)
        time.sleep(0.3)
        end_ms = int(time.time() * 1000)
        time.sleep(0.3)
        after = produce(kafka_conf, tx, 2_000, "after")
        wait_for_answers(kafka_conf, topic_names, len(before) + len(inside) + len(after))
        idle_before = committed(kafka_conf, idle, tx)
        live_before = committed(kafka_conf, f"{prefix}-scorer", tx)
        rng = ("--from", f"ts:{start_ms}", "--to", f"ts:{end_ms}")
        plan = run_replay(kafka_conf, redis_url, prefix, "range", *rng, "--dry-run")
        assert plan["total"] == len(inside) and plan["stored"] is False
        # The live worker keeps scoring new events while the replay runs.
        more = threading.Thread(target=produce, args=(kafka_conf, tx, 3_000, "during"))
        more.start()
        summary = run_replay(kafka_conf, redis_url, prefix, "range", *rng, "--batch-size", "2000")
        more.join()
        live_scores, live_dead = wait_for_answers(kafka_conf, topic_names, 16_000)
        live_after = committed(kafka_conf, f"{prefix}-scorer", tx)
    finally:
        assert worker.terminate() == 0
    assert summary["complete"] and summary["records"] == len(inside)
    assert summary["dead_letters"] == 7 and summary["scores"] == len(inside) - 7
    scores, dead = replay_keys(kafka_conf, summary["output_topic"])
    assert exactly_once_report(inside, scores, dead) == (0, 0)
    assert len(scores) + len(dead) == len(inside)
    for rec in scores[:500]:
        assert rec.headers[HEADER_REPLAY_ID] == b"range"
        assert decode_score(rec.value or b"").replay_id == "range"
    # The live side: untouched by the replay.
    assert committed(kafka_conf, idle, tx) == idle_before
    assert all(not meta for _off, meta in live_after.values())
    assert all(live_after[p][0] >= live_before[p][0] for p in live_before)
    assert len(live_scores) + len(live_dead) == 16_000  # no replay record on live topics
    assert not any(HEADER_REPLAY_ID in r.headers for r in live_scores)
    replay_group = committed(kafka_conf, "rung-replay-range", tx)
    assert sum(json.loads(m)["e"] - json.loads(m)["s"] for _o, m in replay_group.values()) == 8_000
    # A second run of a finished replay does nothing.
    again = run_replay(kafka_conf, redis_url, prefix, "range", *rng)
    assert again["records"] == 0 and again["complete"] and again["resumed"]
    flips = compare_json(kafka_conf, redis_url, prefix, topic_names.scores,
                         summary["output_topic"])
    assert flips["matched"] == len(inside) - 7 and flips["only_b"] == 0


def compare_json(kafka_conf: dict[str, Any], redis_url: str, prefix: str, a: str,
                 b: str) -> dict[str, Any]:
    cmd, env = replay_cmd(kafka_conf, redis_url, prefix, "unused")
    cmd = [sys.executable, "-m", "stream_app.cli.replay", "replay", "compare", a, b, "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.usefixtures("models")
def test_a_replay_killed_with_sigkill_resumes_the_stored_range_exactly(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str,
        topic_names: TopicNames, tmp_path: Path) -> None:
    tx = topic_names.transactions
    keys = produce(kafka_conf, tx, 40_000, "k", bad_every=4_000)
    out = f"{prefix}.replay.kill.scores"
    cmd, env = replay_cmd(kafka_conf, redis_url, prefix, "kill", "--from", "earliest",
                          "--batch-size", "250")
    with (tmp_path / "replay.log").open("wb") as log:  # a file: a full pipe would block it
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    try:
        seen = 0
        end = time.monotonic() + 120
        while seen == 0 and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.2)
            try:
                seen = len(read_topic(kafka_conf, out, timeout_s=10))
            except (KeyError, TimeoutError, KafkaException):  # the topic is being created
                seen = 0
        assert proc.poll() is None, "the replay finished before it could be killed"
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = len(read_topic(kafka_conf, out))
    assert 0 < partial < 40_000
    # Records produced after the snapshot are not part of the stored range.
    produce(kafka_conf, tx, 1_000, "late")
    plan = run_replay(kafka_conf, redis_url, prefix, "kill", "--dry-run")
    assert plan["stored"] and plan["total"] == 40_000 and plan["remaining"] < 40_000
    summary = run_replay(kafka_conf, redis_url, prefix, "kill", "--from", "earliest")
    assert summary["resumed"] and summary["complete"]
    scores, dead = replay_keys(kafka_conf, out)
    assert exactly_once_report(keys, scores, dead) == (0, 0)
    assert len(scores) + len(dead) == 40_000 and len(dead) == 9


@pytest.mark.usefixtures("models")
def test_a_model_version_mismatch_is_refused_and_another_dir_is_used(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str, topic_names: TopicNames,
        tmp_path: Path) -> None:
    produce(kafka_conf, topic_names.transactions, 500, "mv")
    refused = run_replay(kafka_conf, redis_url, prefix, "mv", "--from", "earliest",
                         "--model-version", "no-such-version", expect_rc=1)
    assert "no-such-version" in refused["stderr"] and "--primary-dir" in refused["stderr"]
    other = tmp_path / "primary-v2"
    shutil.copytree(PRIMARY_DIR, other)
    manifest = load_manifest(other)
    version = f"{manifest.version}-retrained-{uuid.uuid4().hex[:4]}"
    from dataclasses import replace

    write_manifest(other, replace(manifest, version=version))
    summary = run_replay(kafka_conf, redis_url, prefix, "mv", "--from", "earliest",
                         "--model-version", version, "--primary-dir", str(other),
                         "--deadline-s", "0")
    assert summary["model_version"] == version and summary["records"] == 500
    scores = read_topic(kafka_conf, summary["output_topic"])
    versions = {decode_score(r.value or b"").model_version for r in scores}
    if summary["by_tier"].get("primary"):
        assert version in versions


def test_the_cli_shows_progress_and_a_summary_by_tier(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str, topic_names: TopicNames,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's wiring (options, progress bar, summary, exit code), with the rules-only
    ladder standing in for trained models so it runs on a fresh checkout."""
    from typer.testing import CliRunner

    from scorers.config import LadderConfig
    from scorers.features import event_features
    from scorers.standard import standard_ladder
    from stream_app.cli import replay as cli_replay
    from stream_app.replay import scoring as replay_scoring

    produce(kafka_conf, topic_names.transactions, 1_200, "cli", bad_every=600)
    ladder = standard_ladder(LadderConfig(), primary=None, fallback=None,
                             event_features=event_features)
    monkeypatch.setattr(replay_scoring, "build_replay_scorer", lambda *a, **k: (ladder, "none"))
    monkeypatch.setenv("RUNG_KAFKA__BOOTSTRAP_SERVERS", kafka_conf["bootstrap.servers"])
    monkeypatch.setenv("RUNG_TOPICS__PREFIX", prefix)
    monkeypatch.setenv("RUNG_REDIS__URL", redis_url)
    result = CliRunner().invoke(cli_replay.app, ["replay", "run", "--replay-id", "cli",
                                                 "--from", "earliest", "--batch-size", "300"])
    assert result.exit_code == 0, result.output
    assert "complete" in result.output and "rules" in result.output
    assert "dead letters" in result.output and "1,200 records" in result.output
    out = f"{prefix}.replay.cli.scores"
    assert len(read_topic(kafka_conf, out)) == 1_199
    assert len(read_topic(kafka_conf, f"{out}.dead-letter")) == 1
    refused = CliRunner().invoke(cli_replay.app, [
        "replay", "run", "--replay-id", "cli2", "--output-topic", topic_names.scores,
        "--from", "earliest"])
    assert refused.exit_code == 1 and "live topics" in refused.output


# ---- pipelined commits: real aborts and a real fence in the middle of a range ------------
class _InjectingCommitter(BatchCommitter):
    """The replay's real committer, with faults injected for real on chosen data commits
    (1 = the first commit that carries records): `abort_at`: the transaction is begun,
    the batch produced, then aborted on the broker (the caller gets False, exactly as
    for an abortable error); `fence_at`: a second producer with the same
    `transactional.id` fences this one first (the commit then fails fatally)."""

    abort_at: frozenset[int] = frozenset()
    fence_at: int | None = None

    def __init__(self, producer_conf: dict[str, Any], **kw: Any) -> None:
        super().__init__(producer_conf, **kw)
        self._conf = producer_conf
        self.data_commits = 0
        self.aborted_records = 0
        self.answered = 0  # records of the data commits that committed

    def commit(self, records: Sequence[OutRecord], offsets: list[TopicPartition],
               rewind_to: list[TopicPartition], consumer: Consumer,
               group_metadata: Any = None) -> bool:
        if records:
            self.data_commits += 1
            if self.data_commits == self.fence_at:
                # the new epoch fences this producer; the fencer itself is not kept
                Producer({k: v for k, v in self._conf.items()
                          if k in ("bootstrap.servers", "transactional.id")}).init_transactions(30)
            if self.data_commits in self.abort_at:
                self.producer.begin_transaction()
                self._produce(records)
                self.producer.flush(30)
                self.producer.abort_transaction(30)
                self.aborted_records += len(records)
                return False
        ok = super().commit(records, offsets, rewind_to, consumer, group_metadata)
        self.answered += len(records) if ok else 0
        return ok


def _rules_replay(kafka_conf: dict[str, Any], redis_url: str, prefix: str, replay_id: str,
                  committer: type[_InjectingCommitter], monkeypatch: pytest.MonkeyPatch,
                  from_spec: str | None = "earliest", made: list[_InjectingCommitter] | None = None,
                  ) -> tuple[Any, list[_InjectingCommitter]]:
    from scorers.config import LadderConfig
    from scorers.features import event_features
    from scorers.standard import standard_ladder
    from stream_app.config import load_settings
    from stream_app.replay import run as replay_run

    made = [] if made is None else made

    def build(conf: dict[str, Any], **kw: Any) -> _InjectingCommitter:
        made.append(committer(conf, **kw))
        return made[-1]

    monkeypatch.setattr(replay_run, "BatchCommitter", build)
    settings = load_settings(kafka__bootstrap_servers=kafka_conf["bootstrap.servers"],
                             topics__prefix=prefix, redis__url=redis_url,
                             kafka__group_id=f"{prefix}-scorer")
    ladder = standard_ladder(LadderConfig(), primary=None, fallback=None,
                             event_features=event_features)
    options = replay_run.ReplayOptions(replay_id, f"{prefix}.transactions",
                                       f"{prefix}.replay.{replay_id}.scores",
                                       from_spec=from_spec, batch_records=1_000)
    try:
        return replay_run.Replay(settings, options, ladder).run(), made
    finally:
        ladder.close()


def _stored_range(kafka_conf: dict[str, Any], replay_id: str, topic: str) -> dict[int, Any]:
    rows = committed(kafka_conf, f"rung-replay-{replay_id}", topic)
    return {p: (off, json.loads(meta)) for p, (off, meta) in rows.items()}


def test_pipelined_aborts_mid_range_rewind_and_answer_every_record_once(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str, topic_names: TopicNames,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tx = topic_names.transactions
    keys = produce(kafka_conf, tx, 20_000, "ab", bad_every=2_000)

    class AbortTwice(_InjectingCommitter):
        abort_at = frozenset({3, 8})

    summary, made = _rules_replay(kafka_conf, redis_url, prefix, "ab", AbortTwice, monkeypatch)
    assert summary.complete and summary.aborted == 2 and made[0].aborted_records > 0
    assert summary.records == 20_000 and summary.dead_letters == 9
    out = f"{prefix}.replay.ab.scores"
    scores, dead = replay_keys(kafka_conf, out)
    assert exactly_once_report(keys, scores, dead) == (0, 0)
    assert len(scores) + len(dead) == 20_000
    # the aborted transactions really reached the broker: read_uncommitted sees them
    uncommitted = read_topic(kafka_conf, out, isolation="read_uncommitted")
    uncommitted_dead = read_topic(kafka_conf, f"{out}.dead-letter", isolation="read_uncommitted")
    assert len(uncommitted) + len(uncommitted_dead) == 20_000 + made[0].aborted_records
    stored = _stored_range(kafka_conf, "ab", tx)
    assert all(off == meta["e"] for off, meta in stored.values())
    assert sum(meta["e"] - meta["s"] for _off, meta in stored.values()) == 20_000


def test_a_replay_fenced_mid_range_stops_and_its_restart_resumes_exactly(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str, topic_names: TopicNames,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from stream_app.kafka.errors import FatalError

    tx = topic_names.transactions
    keys = produce(kafka_conf, tx, 20_000, "fe", bad_every=5_000)

    class FenceOnce(_InjectingCommitter):
        fence_at = 6

    made: list[_InjectingCommitter] = []
    with pytest.raises(FatalError):
        _rules_replay(kafka_conf, redis_url, prefix, "fe", FenceOnce, monkeypatch, made=made)
    out = f"{prefix}.replay.fe.scores"
    scores, dead = replay_keys(kafka_conf, out)
    stored = _stored_range(kafka_conf, "fe", tx)
    done = sum(off - meta["s"] for off, meta in stored.values())
    # the five commits before the fenced one hold, nothing after them: the committed
    # outputs are exactly the records below the committed offsets
    assert made[0].data_commits == 6 and 0 < done == made[0].answered < 20_000
    assert len(scores) + len(dead) == done
    summary, _ = _rules_replay(kafka_conf, redis_url, prefix, "fe", _InjectingCommitter,
                               monkeypatch, from_spec=None)
    assert summary.resumed and summary.complete and summary.records == 20_000 - done
    scores, dead = replay_keys(kafka_conf, out)
    assert exactly_once_report(keys, scores, dead) == (0, 0)
    assert len(scores) + len(dead) == 20_000 and len(dead) == 3
    stored = _stored_range(kafka_conf, "fe", tx)
    assert all(off == meta["e"] for off, meta in stored.values())
