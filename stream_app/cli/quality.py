"""`rung monitor` and `rung evaluate-live`: online performance from the live topics
(registered by stream_app.cli.app; the work lives in stream_app.quality)."""

from __future__ import annotations

import json
import signal
import threading
from typing import Annotated

import typer

from stream_app.cli.options import Bootstrap, Prefix, bootstrap_servers_or_stack, redis_url_or_stack
from stream_app.config import load_settings
from stream_app.logs import configure_logging

app = typer.Typer(help="Online performance: scores joined with delayed labels.",
                  no_args_is_help=True)

DEFAULT_MONITOR_PORT = 9470


@app.command("monitor")
def monitor(
    prefix: Prefix = None, bootstrap_servers: Bootstrap = None,
    group_id: Annotated[str | None, typer.Option(
        help="consumer group [default: <RUNG_KAFKA__GROUP_ID>-quality]")] = None,
    metrics_port: Annotated[int, typer.Option(help="/metrics port; 0 = a free one")] = (
        DEFAULT_MONITOR_PORT),
    state: Annotated[str, typer.Option(help="join state: redis | memory")] = "redis",
    ttl_days: Annotated[float, typer.Option(help="how long one side waits for the other")] = 30,
    seconds: Annotated[float | None, typer.Option(help="stop after this long")] = None,
) -> None:
    """Join committed scores with delayed labels; serve per-tier precision/recall counts."""
    from confluent_kafka import Consumer

    from stream_app.http import MetricsServer
    from stream_app.metrics import Metrics, QualityMetrics
    from stream_app.quality.join import JoinStore, MemoryJoinStore, RedisJoinStore
    from stream_app.quality.monitor import QualityMonitor, monitor_consumer_config, run_monitor

    s = load_settings(kafka__bootstrap_servers=bootstrap_servers_or_stack(bootstrap_servers),
                      topics__prefix=prefix, redis__url=redis_url_or_stack())
    configure_logging(s.log.format, s.log.level)
    ttl_s = ttl_days * 86_400.0
    store: JoinStore
    if state == "memory":
        store = MemoryJoinStore(ttl_s=ttl_s)
    elif state == "redis":
        from stream_app.wiring import redis_client

        client = redis_client(s, socket_timeout_s=2.0)
        if client is None:
            raise typer.BadParameter("no Redis configured (RUNG_REDIS__URL); or --state memory")
        store = RedisJoinStore(client, namespace=f"{s.topics.prefix}:quality", ttl_s=ttl_s)
    else:
        raise typer.BadParameter(f"--state must be redis or memory, not {state!r}")
    names = s.topics.names()
    metrics = Metrics()
    quality = QualityMetrics(metrics.registry)
    mon = QualityMonitor(store, quality, names.scores, names.labels)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    conf = monitor_consumer_config(s.kafka.client_config(),
                                   group_id or f"{s.kafka.group_id}-quality")
    with MetricsServer(metrics, host=s.metrics.host, port=metrics_port) as server:
        typer.echo(f"monitor: {names.scores} ⨝ {names.labels}, metrics on {server.url}/metrics")
        n = run_monitor(Consumer(conf), mon, (names.scores, names.labels), stop.is_set,
                        max_s=seconds, on_assigned=metrics.set_assigned_partitions)
    typer.echo(json.dumps({"records": n, "counts": {
        f"{tier}/{version}": c.as_dict() for (tier, version), c in mon.join.counts.items()}}))


@app.command("evaluate-live")
def evaluate_live(
    prefix: Prefix = None, bootstrap_servers: Bootstrap = None,
    cards: Annotated[bool, typer.Option(
        help="read the transactions topic for Card Precision@100's cards and days")] = True,
    unlabelled_as_genuine: Annotated[bool, typer.Option(
        help="count scores without a label as genuine")] = False,
    timeout_s: Annotated[float, typer.Option(help="per topic read-back bound")] = 120.0,
) -> None:
    """`rung evaluate`'s per-tier table (AUC ROC, AP, Card Precision@100) from the scores
    and labels topics, with label counts; last line JSON."""
    from stream_app.kafka.readback import read_topic
    from stream_app.quality.live_eval import (
        cards_of,
        first_labels,
        first_scores,
        markdown_table,
        summary,
    )
    from stream_app.quality.live_eval import evaluate_live as run_live

    s = load_settings(kafka__bootstrap_servers=bootstrap_servers_or_stack(bootstrap_servers),
                      topics__prefix=prefix)
    configure_logging(s.log.format, s.log.level)
    conf, names = s.kafka.client_config(), s.topics.names()
    scores = first_scores(r.value for r in read_topic(conf, names.scores, timeout_s))
    labels = first_labels(r.value for r in read_topic(conf, names.labels, timeout_s))
    card_map = (cards_of(r.value for r in read_topic(conf, names.transactions, timeout_s))
                if cards else None)
    ev = run_live(scores, labels, card_map, unlabelled_as_genuine=unlabelled_as_genuine)
    typer.echo(f"live: {ev.scores} scores, {ev.labels} labels, "
               f"{ev.unlabelled_scores} scores without a label, "
               f"{ev.labels_without_score} labels without a score")
    typer.echo(markdown_table(ev))
    typer.echo(json.dumps(summary(ev)))
