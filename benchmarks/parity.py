"""`make parity`: do the live scores deliver what the offline evaluation promises?

On the real stack (a `LocalStack` of its own), with the Handbook protocol's data
(`scorers.lab.training.data.build_dataset`, the same transactions `rung evaluate`
scores):

1. warm the Redis feature store with the 38 days of events before the test week
   (bulk load, events only) and produce the labels already known by then to the
   labels topic, where the worker's label consumer applies them, exactly once;
2. start a worker (`rung run`), produce the test week as a live stream in
   event-time order at a steady rate (default 2,000 events/s, well under half the
   worker's measured maximum), each event with its own event time, and each label
   (`scorers.lab.sim.labels`: every fraud labelled within the 7-day delay the
   features assume) once the stream's clock reaches its time;
3. SIGKILL the worker once mid-run and start a successor;
4. read back the committed scores, compute AUC ROC, average precision and Card
   Precision@100 on the test rows (`Dataset.test.rows`: the test week less the
   customers already known compromised, as offline) and print them beside the
   offline numbers for the same transactions;
5. recompute every online aggregate from what was fed (history + the transactions
   and labels topics) and count the entities whose Redis ring differs.

Writes `benchmarks/results/parity-<time>.json`; the last line printed is JSON:
`{"offline_ap", "live_ap", "primary_share", "feature_mismatches", ...}`.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis

from benchmarks.report import Goal, result_document, write_document
from scorers.feature_store import RedisFeatureStore
from scorers.features.online import DAY_S
from scorers.lab.sim.convert import to_labels, to_payloads, to_transactions
from scorers.lab.sim.labels import simulate_labels
from scorers.lab.training.data import Dataset, Protocol, build_dataset
from scorers.lab.training.evaluate import evaluate
from scorers.lab.training.metrics import average_precision, card_precision_at_k, roc_auc
from scorers.models.defaults import FALLBACK_DIR, PRIMARY_DIR
from stream_app.devstack.produce import _produce
from topics.catalog import TopicNames
from topics.codec import decode_label, decode_score, decode_transaction, encode_label
from topics.schemas import Label, Score, Transaction

_send = _produce  # a producer call that waits out a full local queue

WARM_DAYS = 38  # the longest window (30 days, 7-day delay) plus one
AP_TOLERANCE = 0.01
MIN_PRIMARY_SHARE = 0.999


def _producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    from stream_app.devstack.produce import THROUGHPUT_CONFIG

    return Producer({"bootstrap.servers": bootstrap, **THROUGHPUT_CONFIG, "linger.ms": 5,
                     "enable.idempotence": True, "acks": "all"})


class LiveStream:
    """The test week in event-time order at a steady rate, labels released on time."""

    def __init__(self, bootstrap: str, names: TopicNames, keys: Sequence[bytes],
                 values: Sequence[bytes], times: Sequence[float], labels: Sequence[Label],
                 rate_per_s: float) -> None:
        self.bootstrap, self.names = bootstrap, names
        self.keys, self.values, self.times = keys, values, times
        self.labels, self.rate = labels, rate_per_s
        self.sent = 0
        self.labels_sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc

    def _run(self) -> None:
        producer = _producer(self.bootstrap)
        start = time.monotonic()
        next_label = 0
        for i, (key, value, t) in enumerate(zip(self.keys, self.values, self.times,
                                                strict=True)):
            while next_label < len(self.labels) and self.labels[next_label].labelled_at_s <= t:
                label = self.labels[next_label]
                _send(producer, self.names.labels, label.transaction_id.encode(),
                      encode_label(label))
                next_label += 1
            ahead = i / self.rate - (time.monotonic() - start)
            if ahead > 0.002:
                producer.poll(0)
                time.sleep(ahead)
            _send(producer, self.names.transactions, key, value)
            self.sent = i + 1
        self.labels_sent = next_label
        if producer.flush(120.0):
            raise RuntimeError("the live stream was not fully delivered")


def _answers(bootstrap: str, names: TopicNames, expect: int,
             timeout_s: float) -> tuple[dict[str, Score], int]:
    from stream_app.kafka.readback import read_topic

    conf = {"bootstrap.servers": bootstrap}
    end = time.monotonic() + timeout_s
    while True:
        scores: dict[str, Score] = {}
        for r in read_topic(conf, names.scores):
            if r.value is not None:
                s = decode_score(r.value)
                if s.transaction_id in scores:
                    raise AssertionError(f"duplicated score for {s.transaction_id}")
                scores[s.transaction_id] = s
        dead = len(read_topic(conf, names.dead_letter))
        if len(scores) + dead >= expect or time.monotonic() > end:
            return scores, dead
        time.sleep(1.0)


def _wait_applied(client: redis.Redis, topic: str, ends: dict[int, int],
                  timeout_s: float = 120.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        marks = client.mget([f"rung:fs:applied:{topic}:{p}" for p in sorted(ends)])
        if all(m is not None and int(m) >= ends[p]
               for p, m in zip(sorted(ends), marks, strict=True)):
            return True
        time.sleep(0.5)
    return False


def _topic_ends(bootstrap: str, topic: str) -> tuple[dict[int, int], list[bytes]]:
    from stream_app.kafka.readback import read_topic

    records = read_topic({"bootstrap.servers": bootstrap}, topic)
    ends: dict[int, int] = {}
    for r in records:
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
    return ends, [r.value for r in records if r.value is not None]


def _metrics(ds: Dataset, y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    day = ds.data.day[ds.test.rows]
    card = ds.data.customer[ds.test.rows]
    return {"auc_roc": round(roc_auc(y, s), 4), "average_precision": round(average_precision(y, s), 4),
            "card_precision_at_100": round(card_precision_at_k(day, card, y, s, 100), 4)}


def _mismatches(client: redis.Redis, fed: list[Transaction], frauds: list[Transaction]) -> int:
    """Entities whose live ring differs from one rebuilt from what was fed."""
    expected = RedisFeatureStore(client, prefix="parity:expected")
    for lo in range(0, len(fed), 50_000):
        expected.update(fed[lo:lo + 50_000], 30.0)
    expected.record_labels(frauds, [True] * len(frauds), 30.0)
    entities = sorted({f"c:{t.customer_id}" for t in fed} | {f"t:{t.terminal_id}" for t in fed})
    bad = 0
    for lo in range(0, len(entities), 5_000):
        part = entities[lo:lo + 5_000]
        live = client.mget([f"rung:fs:ring:{k}" for k in part])
        want = client.mget([f"parity:expected:ring:{k}" for k in part])
        bad += sum(1 for a, b in zip(live, want, strict=True) if a != b)
    return bad


def run(rate_per_s: float, kill_at: float, seed: int, run_dir: Path) -> dict[str, Any]:
    from stream_app.devstack.process import WorkerProcess
    from stream_app.devstack.stack import LocalStack
    from stream_app.kafka.admin import create_rung_topics

    t0 = time.monotonic()
    ds = build_dataset(seed)
    offline = evaluate(PRIMARY_DIR, FALLBACK_DIR, dataset=ds, with_baselines=False)
    data, proto = ds.data, Protocol()
    day = data.day
    warm = np.flatnonzero((day >= proto.test_start_day - WARM_DAYS) & (day < proto.test_start_day))
    live = np.flatnonzero((day >= proto.test_start_day)
                          & (day < proto.test_start_day + proto.test_days))
    test_start_s = float(data.start_s + proto.test_start_day * DAY_S)
    sim_labels = simulate_labels(data, seed=seed)
    labelled = sim_labels.take(np.isin(sim_labels.row, np.concatenate([warm, live])))
    labels = to_labels(data, labelled)
    known = [lb for lb in labels if lb.labelled_at_s < test_start_s]
    later = [lb for lb in labels if lb.labelled_at_s >= test_start_s]
    live_end_s = float(data.event_time_s[live[-1]])
    prepared_s = time.monotonic() - t0

    stack = LocalStack(run_dir / "stack")
    state = stack.up()
    try:
        bootstrap = state.bootstrap_servers
        prefix = f"parity-{uuid.uuid4().hex[:6]}"
        names = TopicNames.with_prefix(prefix)
        create_rung_topics({"bootstrap.servers": bootstrap}, names, partitions=6)
        client = redis.Redis.from_url(state.redis_url)
        warm_txs = to_transactions(data, rows=warm)
        store = RedisFeatureStore(client)
        store.bulk_load(warm_txs, np.zeros(len(warm_txs), dtype=np.bool_), 60.0)
        producer = _producer(bootstrap)
        for lb in known:
            _send(producer, names.labels, lb.transaction_id.encode(), encode_label(lb))
        producer.flush(60.0)
        keys, values = to_payloads(data, int(live[0]), int(live[-1]) + 1)
        stream = LiveStream(bootstrap, names, keys, values,
                            data.event_time_s[live[0]:live[-1] + 1].tolist(),
                            [lb for lb in later if lb.labelled_at_s <= live_end_s], rate_per_s)
        env = {"RUNG_KAFKA__TRANSACTIONAL_ID": f"{names.transactions}-slot0"}
        worker = WorkerProcess(bootstrap, state.redis_url, prefix, env=env)
        successor: WorkerProcess | None = None
        try:
            worker.wait_ready()
            label_ends, _ = _topic_ends(bootstrap, names.labels)
            _wait_applied(client, names.labels, label_ends)  # known labels in before the stream
            t_stream = time.monotonic()
            thread = threading.Thread(target=stream.run, name="parity-stream")
            thread.start()
            while stream.sent < kill_at * len(keys) and thread.is_alive():
                time.sleep(0.05)
            worker.proc.kill()  # SIGKILL mid-run; the successor fences its transaction
            worker.proc.wait(10)
            killed_after = stream.sent
            successor = WorkerProcess(bootstrap, state.redis_url, prefix, env=env)
            successor.wait_ready()
            thread.join()
            if stream.error is not None:
                raise stream.error
            stream_s = time.monotonic() - t_stream
            scores, dead = _answers(bootstrap, names, len(keys), timeout_s=300.0)
            tx_ends, tx_values = _topic_ends(bootstrap, names.transactions)
            label_ends, label_values = _topic_ends(bootstrap, names.labels)
            applied = (_wait_applied(client, names.transactions, tx_ends)
                       and _wait_applied(client, names.labels, label_ends))
        finally:
            worker.kill()
            if successor is not None:
                successor.terminate()
        fed = warm_txs + [decode_transaction(v) for v in tx_values]
        fed_labels = [decode_label(v) for v in label_values]
        by_id = {t.transaction_id: t for t in fed}
        frauds = [by_id[lb.transaction_id] for lb in fed_labels
                  if lb.is_fraud and lb.transaction_id in by_id]
        mismatches = _mismatches(client, fed, frauds)
    finally:
        stack.down()

    test_ids = [f"sim-{r}" for r in ds.test.rows.tolist()]
    missing = [i for i in test_ids if i not in scores]
    y = ds.test.y
    live_s = np.array([scores[i].score if i in scores else 0.5 for i in test_ids])
    tiers = Counter(str(s.tier) for s in scores.values())
    reasons = Counter(r for s in scores.values() if s.tier != "primary" for r in s.reasons)
    offline_rows = {r.tier: r for r in offline.rows}
    primary_offline = offline_rows["primary"]
    answered = sum(tiers.values())
    primary_share = tiers.get("primary", 0) / answered if answered else 0.0
    live_metrics = _metrics(ds, y, live_s)
    return {
        "offline": {name: {"auc_roc": round(r.auc_roc, 4),
                           "average_precision": round(r.average_precision, 4),
                           "card_precision_at_100": round(r.card_precision_at_100, 4)}
                    for name, r in offline_rows.items()},
        "live": live_metrics,
        "offline_ap": round(primary_offline.average_precision, 4),
        "live_ap": live_metrics["average_precision"],
        "primary_share": round(primary_share, 5),
        "feature_mismatches": mismatches,
        "features_applied_to_end": applied,
        "tiers": dict(tiers), "degradation_reasons": dict(reasons.most_common(8)),
        "events": len(keys), "test_rows": len(test_ids), "test_frauds": int(y.sum()),
        "scores": len(scores), "dead_letters": dead, "test_rows_unanswered": len(missing),
        "labels_before_stream": len(known), "labels_in_stream": stream.labels_sent,
        "sigkill_after_events": killed_after, "rate_per_s": rate_per_s,
        "stream_s": round(stream_s, 1), "prepare_s": round(prepared_s, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=2000.0, help="live events per second")
    p.add_argument("--kill-at", type=float, default=0.4,
                   help="SIGKILL the worker after this share of the stream")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from stream_app.logs import configure_logging

    configure_logging("console", "warning")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="rung-parity-") as tmp:
        result = run(args.rate, args.kill_at, args.seed, Path(tmp))
    goals = [Goal("live primary AP within 0.01 of offline",
                  abs(result["live_ap"] - result["offline_ap"]), AP_TOLERANCE, False),
             Goal("primary share", result["primary_share"], MIN_PRIMARY_SHARE, True),
             Goal("feature mismatches after a SIGKILL", float(result["feature_mismatches"]),
                  0.0, False)]
    doc = result_document("parity", {"rate_per_s": args.rate, "kill_at": args.kill_at,
                                     "seed": args.seed, "partitions": 6}, result, goals,
                          started_at=started)
    path = write_document(doc)
    for name in ("primary", "fallback", "rules"):
        o = result["offline"].get(name, {})
        print(f"offline {name:<9} AUC {o.get('auc_roc', float('nan')):.3f}  "
              f"AP {o.get('average_precision', float('nan')):.3f}  "
              f"CP@100 {o.get('card_precision_at_100', float('nan')):.3f}")
    lv = result["live"]
    print(f"live (as answered)  AUC {lv['auc_roc']:.3f}  AP {lv['average_precision']:.3f}  "
          f"CP@100 {lv['card_precision_at_100']:.3f}   tiers {result['tiers']}")
    for g in goals:
        print(f"{g.name}: {g.measured} (limit {g.limit}) {'met' if g.met else 'MISSED'}")
    print(f"wrote {path}")
    print(orjson.dumps({k: result[k] for k in ("offline_ap", "live_ap", "primary_share",
                                                 "feature_mismatches")}).decode())
    return 0 if all(g.met for g in goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())
