"""The `rung` command line: stack, topics, produce-demo, run, demo, and more."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from stream_app.cli.options import Bootstrap, Prefix, bootstrap_servers_or_stack, redis_url_or_stack
from stream_app.config import load_settings
from stream_app.logs import configure_logging

app = typer.Typer(help="rung: a streaming fraud scorer for Kafka with a degradation ladder.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
stack_app = typer.Typer(help="The local Kafka + Redis stack (no Docker).", no_args_is_help=True)
topics_app = typer.Typer(help="rung's topics.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
console = Console()

# ---- stack -------------------------------------------------------------------
@stack_app.command("up")
def stack_up(run_dir: Annotated[Path | None, typer.Option()] = None,
             security: Annotated[str | None, typer.Option(
                 help="add an authenticated client listener: sasl_plaintext | sasl_ssl")] = None,
             sasl_mechanism: Annotated[str, typer.Option(
                 help="SCRAM-SHA-512 | SCRAM-SHA-256 | PLAIN")] = "SCRAM-SHA-512",
             faults: Annotated[bool, typer.Option(
                 "--faults", help="route Kafka and Redis clients through Toxiproxy "
                                  "(network faults; see docs/reliability.md)")] = False,
             registry: Annotated[bool, typer.Option(
                 "--registry", help="also start a schema registry (Apicurio, Confluent API) "
                                    "for the Avro/Protobuf formats (docs/formats.md)")] = False,
             ) -> None:
    """Start Kafka (KRaft) and Redis on free ports; wait until both answer."""
    from stream_app.devstack.stack import LocalStack

    configure_logging()
    state = LocalStack(run_dir, security=security, sasl_mechanism=sasl_mechanism,
                       faults=faults, registry=registry).up()
    if state.registry_url:
        console.print(f"schema registry  [bold]{state.registry_url}[/]  (pid {state.registry_pid})")
    if state.toxiproxy_api:
        console.print(f"toxiproxy  [bold]{state.toxiproxy_api}[/]  (pid {state.toxiproxy_pid}; "
                      f"proxies {state.proxies}; direct kafka {state.direct_bootstrap_servers}, "
                      f"direct redis {state.direct_redis_url})")
    console.print(f"kafka  [bold]{state.bootstrap_servers}[/]  (pid {state.kafka_pid})")
    if state.sasl_bootstrap_servers:
        console.print(f"kafka  [bold]{state.sasl_bootstrap_servers}[/]  "
                      f"({state.security_protocol} {state.sasl_mechanism}; users and CA in "
                      f"{state.run_dir}/stack.json)")
    console.print(f"redis  [bold]{state.redis_url}[/]  (pid {state.redis_pid})")
    console.print(f"export KAFKA_BOOTSTRAP_SERVERS={state.bootstrap_servers} "
                  f"REDIS_URL={state.redis_url}")


@stack_app.command("down")
def stack_down(run_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """Stop what `stack up` started, by PID, and remove its run directory."""
    from stream_app.devstack.stack import LocalStack

    configure_logging()
    stopped = LocalStack(run_dir).down()
    console.print("stack stopped" if stopped else "no stack was running")


@stack_app.command("status")
def stack_status(run_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """Say whether the local stack runs and answers; exit 1 when it does not."""
    from stream_app.devstack.stack import LocalStack

    status = LocalStack(run_dir).status()
    console.print_json(json.dumps(status))
    raise typer.Exit(0 if status.get("running") else 1)


# ---- topics ------------------------------------------------------------------
@topics_app.command("create")
def topics_create(prefix: Prefix = None, partitions: int = 6,
                  bootstrap_servers: Bootstrap = None) -> None:
    """Create the transactions, scores, manual-review and dead-letter topics."""
    from stream_app.kafka.admin import create_rung_topics

    configure_logging()
    s = load_settings(kafka__bootstrap_servers=bootstrap_servers_or_stack(bootstrap_servers), topics__prefix=prefix)
    created = create_rung_topics(s.kafka.client_config(), s.topics.names(), partitions)
    for name in s.topics.names().all():
        console.print(f"{name}  {'created' if name in created else 'exists'}")


# ---- produce-demo ------------------------------------------------------------
@app.command("produce-demo")
def produce_demo(rate: Annotated[float | None, typer.Option(
                     help="events per second; 0 = as fast as possible "
                          "[default: 0 with --count, else 1000]")] = None,
                 seconds: Annotated[float, typer.Option(help="how long to produce")] = 10.0,
                 count: Annotated[int | None, typer.Option(help="stop after N events")] = None,
                 bad_every: Annotated[int, typer.Option(help="every Nth record broken; 0=none")] = 0,
                 seed: int = 7, prefix: Prefix = None, bootstrap_servers: Bootstrap = None,
                 warm_features: Annotated[bool, typer.Option(
                     help="load the simulated history into the Redis feature store first")] = True,
                 customers: Annotated[int | None, typer.Option(
                     help="distinct customers [default: about count / 1.9]")] = None,
                 terminals: Annotated[int | None, typer.Option(
                     help="distinct terminals [default: 2 x customers]")] = None,
                 labels: Annotated[bool, typer.Option(
                     help="send the simulated labels to the labels topic at their times "
                          "(the history's known ones first, in bulk)")] = True,
                 ) -> None:
    """Write simulated transaction events to the transactions topic at a chosen rate,
    and their delayed labels to the labels topic."""
    from stream_app.devstack.demo import produce_simulated

    configure_logging()
    s = load_settings(kafka__bootstrap_servers=bootstrap_servers_or_stack(bootstrap_servers), topics__prefix=prefix,
                      redis__url=redis_url_or_stack())
    if rate is None:
        rate = 0.0 if count is not None else 1000.0
    report = produce_simulated(s, rate_per_s=rate, duration_s=seconds, max_events=count,
                               bad_every=bad_every, seed=seed, warm_features=warm_features,
                               customers=customers, terminals=terminals, labels=labels)
    console.print(f"produced {report.sent} records ({report.bad} deliberately broken) "
                  f"in {report.seconds:.1f}s")
    if labels:
        console.print(f"labels: {report.labels_sent} sent, {report.labels_pending} not yet due")


# ---- run ---------------------------------------------------------------------
@app.command("run")
def run(runtime: Annotated[str, typer.Option(help="confluent | faust")] = "confluent",
        prefix: Prefix = None, bootstrap_servers: Bootstrap = None,
        group_id: Annotated[str | None, typer.Option()] = None,
        delivery: Annotated[str | None, typer.Option(
            help="exactly_once | at_least_once")] = None,
        metrics_port: Annotated[int | None, typer.Option()] = None,
        batch_size: Annotated[int | None, typer.Option()] = None,
        deadline_s: Annotated[float | None, typer.Option()] = None,
        faults: Annotated[bool | None, typer.Option(
            help="enable run-time fault injection (admin endpoint)")] = None,
        ) -> None:
    """Consume transactions, score them through the ladder, produce scores."""
    from stream_app.live.runner import run_worker

    s = load_settings(kafka__bootstrap_servers=bootstrap_servers_or_stack(bootstrap_servers),
                      kafka__group_id=group_id, kafka__delivery=delivery, topics__prefix=prefix,
                      redis__url=redis_url_or_stack(), metrics__port=metrics_port,
                      batch__max_records=batch_size, batch__deadline_s=deadline_s,
                      admin__faults_enabled=faults)
    configure_logging(s.log.format, s.log.level)
    sys.exit(run_worker(s, runtime=runtime))


# ---- demo --------------------------------------------------------------------
@app.command("demo")
def demo(seconds: Annotated[float, typer.Option(help="how long to produce")] = 25.0,
         rate: Annotated[float, typer.Option(help="events per second")] = 2000.0,
         keep_stack: Annotated[bool, typer.Option(help="leave the stack running")] = False,
         ) -> None:
    """End to end: stack up, topics, produce while a worker scores, summary, stack down."""
    from stream_app.devstack.demo import run_demo

    configure_logging()
    sys.exit(run_demo(seconds=seconds, rate_per_s=rate, keep_stack=keep_stack, console=console))


def _register_subcommands() -> None:
    """Commands that live in their own modules: train/evaluate, top, replay."""
    from stream_app.cli.models import app as models_app
    from stream_app.cli.models import registry_app
    from stream_app.cli.quality import app as quality_app
    from stream_app.cli.replay import replay_app
    from stream_app.ops.top import app as top_app

    app.registered_commands.extend(models_app.registered_commands)
    app.registered_commands.extend(top_app.registered_commands)
    app.registered_commands.extend(quality_app.registered_commands)
    app.add_typer(replay_app, name="replay")
    app.add_typer(registry_app, name="models")


_register_subcommands()

if __name__ == "__main__":
    app()
