"""Replay throughput against a real broker, next to a passthrough baseline from the same run.

`measure_replay(bootstrap, n_records, ...)` pre-produces `n_records` events
(default 200,000: several seconds per run, so the ratio is not noise) to a fresh
topic and replays the whole range in-process, `rounds` times each (default 2),
alternating, every run under its own replay id and output topic:

- baseline: a passthrough scorer (one constant score per record, no model),
  i.e. the ceiling of the replay's Kafka path (consume → transaction → produce);
- replay: the replay ladder (`build_replay_scorer`: primary at the chosen
  model dir, read-only features, no cache) — or the rules-only ladder when no
  trained primary exists (the result says which).

Every run is checked: exactly `n_records` answers, or the result is an error. The
headline `ladder_share_of_ceiling` is the median of the per-round ratios (each
pair ran back to back on the same data); `per_round` keeps every pair.
Run alone (starts a local stack unless KAFKA_BOOTSTRAP_SERVERS is set):

    .venv/bin/python -m benchmarks.replay --records 200000 --rounds 2

writes benchmarks/results/replay.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scorers.deadline import Deadline
from scorers.models.defaults import FALLBACK_DIR, PRIMARY_DIR
from stream_app.config import load_settings
from stream_app.devstack.produce import produce_events
from stream_app.kafka.admin import create_topics, end_offsets
from stream_app.replay.run import Replay, ReplayOptions, ReplaySummary
from topics.catalog import TopicSpec
from topics.schemas import Action, Score, Tier, Transaction

RESULTS = Path(__file__).resolve().parent / "results" / "replay.json"
DEFAULT_RECORDS = 200_000  # several seconds per run at the passthrough rate: less noise


class PassthroughScorer:
    """One constant answer per record: what the replay path costs without a model."""

    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline) -> list[Score]:
        return [Score(tx.transaction_id, 0.0, Action.ALLOW, False, Tier.DEFAULT, "passthrough",
                      0.0, (), 0.0, 0.0) for tx in txs]


def _events(n: int, tag: str) -> Any:
    from benchmarks.e2e import bench_events

    return bench_events(n, tag)


def _ladder(settings: Any, primary_dir: Path | None) -> tuple[Any, str]:
    from stream_app.replay.scoring import build_replay_scorer

    directory = primary_dir or PRIMARY_DIR
    if (directory / "manifest.json").exists() and (FALLBACK_DIR / "manifest.json").exists():
        ladder, version = build_replay_scorer(settings, model_version=None,
                                              primary_dir=directory, deadline_s=None)
        return ladder, f"ladder (primary {version})"
    from scorers.config import LadderConfig
    from scorers.features import event_features
    from scorers.standard import standard_ladder

    return standard_ladder(LadderConfig(), primary=None, fallback=None,
                           event_features=event_features), "rules-only ladder (no trained models)"


def _run(settings: Any, topic: str, replay_id: str, scorer: Any, batch_records: int,
         n_records: int) -> ReplaySummary:
    options = ReplayOptions(replay_id, topic, f"{topic}.{replay_id}", from_spec="earliest",
                            batch_records=batch_records, deadline_s=None)
    summary = Replay(settings, options, scorer).run()
    if summary.records != n_records or summary.scores + summary.dead_letters != n_records:
        raise RuntimeError(f"{replay_id}: {summary.records} records for {n_records} produced")
    return summary


def measure_replay(bootstrap: str, n_records: int = DEFAULT_RECORDS, *,
                   redis_url: str | None = None, batch_records: int = 5000,
                   partitions: int = 6, primary_dir: Path | None = None,
                   rounds: int = 2) -> dict[str, Any]:
    """Replay the same `n_records` with a passthrough scorer and with the ladder, `rounds`
    times in turn (passthrough, ladder, passthrough, ladder, ...); the headline numbers
    are the medians over the rounds, and each round's pair is kept."""
    tag = f"bench-replay-{uuid.uuid4().hex[:8]}"
    conf = {"bootstrap.servers": bootstrap}
    topic = f"{tag}.transactions"
    create_topics(conf, [TopicSpec(topic, partitions)])
    produce_events(conf, topic, _events(n_records, tag), rate_per_s=0, max_events=n_records)
    assert sum(high - low for low, high in end_offsets(conf, topic).values()) == n_records
    settings = load_settings(kafka__bootstrap_servers=bootstrap, topics__prefix=tag,
                             redis__url=redis_url, redis__enabled=redis_url is not None)
    scorer, label = _ladder(settings, primary_dir)
    pairs: list[tuple[ReplaySummary, ReplaySummary]] = []
    try:
        for i in range(max(1, rounds)):
            baseline = _run(settings, topic, f"passthrough-{i}", PassthroughScorer(),
                            batch_records, n_records)
            replay = _run(settings, topic, f"ladder-{i}", scorer, batch_records, n_records)
            pairs.append((baseline, replay))
    finally:
        scorer.close()
    per_round = [{"passthrough_records_per_s": _rate(b), "records_per_s": _rate(r),
                  "share_of_ceiling": round(_rate(r) / _rate(b), 3) if _rate(b) else None,
                  "passthrough_seconds": round(b.loop_s, 3), "seconds": round(r.loop_s, 3),
                  "aborted": b.aborted + r.aborted,
                  # where each run's time went (ReplaySummary.stage_s): a loop that never
                  # waits for its commit is bound by consume + prepare, not by the broker
                  "passthrough_stage_s": b.stage_s, "stage_s": r.stage_s} for b, r in pairs]
    rate = statistics.median(_rate(r) for _b, r in pairs)
    base = statistics.median(_rate(b) for b, _r in pairs)
    shares = [_rate(r) / _rate(b) for b, r in pairs if _rate(b)]
    replay = pairs[-1][1]
    return {
        "benchmark": "replay",
        "records": n_records,
        "partitions": partitions,
        "batch_records": batch_records,
        "rounds": len(pairs),
        "scorer": label,
        "commits": "pipelined (one in flight, stream_app.kafka.pipelined)",
        "records_per_s": rate,
        "seconds": round(statistics.median(r.loop_s for _b, r in pairs), 3),
        "records_per_s_including_setup": round(replay.records_per_s, 1),
        "setup_s": round(replay.elapsed_s - replay.loop_s, 3),
        "by_tier": replay.by_tier,
        "batches": replay.batches,
        "baseline_passthrough_records_per_s": base,
        "baseline_seconds": round(statistics.median(b.loop_s for b, _r in pairs), 3),
        # the median of the per-round ratios: each pair ran back to back on the same data
        "ladder_share_of_ceiling": round(statistics.median(shares), 3) if shares else None,
        "per_round": per_round,
        "explain": "on" if settings.explain.enabled else "off",
        "device": "cpu" if not _cuda() else "cuda",
        "host": platform.node(),
        "cpus": os.cpu_count(),
    }


def _rate(summary: ReplaySummary) -> float:
    """Records per second over the replay loop (set-up excluded)."""
    return round(summary.records / summary.loop_s, 1) if summary.loop_s > 0 else 0.0


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-records", type=int, default=5000)
    parser.add_argument("--primary-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    redis_url = os.environ.get("REDIS_URL")
    stack = None
    if not bootstrap:
        from stream_app.devstack.stack import LocalStack

        stack = LocalStack(Path(".run") / "bench-replay-stack")
        state = stack.up()
        bootstrap, redis_url = state.bootstrap_servers, state.redis_url
    try:
        result = measure_replay(bootstrap, args.records, redis_url=redis_url,
                                batch_records=args.batch_records, primary_dir=args.primary_dir,
                                rounds=args.rounds)
    finally:
        if stack is not None:
            stack.down()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
