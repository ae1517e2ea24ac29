"""`rung replay run` and `rung replay compare` (registered by stream_app.cli.app).

Run alone: `python -m stream_app.cli.replay replay run --help`.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from stream_app.cli.options import Bootstrap, Prefix, bootstrap_servers_or_stack, redis_url_or_stack
from stream_app.config import Settings, load_settings
from stream_app.logs import configure_logging
from stream_app.replay.compare import SEVERITY, Comparison
from stream_app.replay.state import ReplayPlan, Resume

if TYPE_CHECKING:
    from stream_app.replay.run import ReplaySummary

app = typer.Typer(help="rung's replay commands.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
replay_app = typer.Typer(help="Re-score a past range of a topic, off the live group.",
                         no_args_is_help=True)
app.add_typer(replay_app, name="replay")
console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")
EXIT_INCOMPLETE = 2
MAX_PARTITION_ROWS = 16



def _settings(bootstrap: str | None, prefix: str | None) -> Settings:
    return load_settings(kafka__bootstrap_servers=bootstrap_servers_or_stack(bootstrap),
                         topics__prefix=prefix, redis__url=redis_url_or_stack())


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rec/s" if speed else "- rec/s", style="cyan")


class RichProgress:
    """The replay's progress: a total bar with rate and ETA, and one bar per partition."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._tasks: dict[int, TaskID] = {}
        self._done: dict[int, int] = {}
        self._total: TaskID | None = None

    def start(self, plan: ReplayPlan, positions: dict[int, int]) -> None:
        done = {r.partition: positions[r.partition] - r.start for r in plan.ranges}
        self._done = dict(done)
        self._total = self.progress.add_task("total", total=plan.total,
                                             completed=sum(done.values()))
        if len(plan.ranges) <= MAX_PARTITION_ROWS:
            for r in plan.ranges:
                self._tasks[r.partition] = self.progress.add_task(
                    f"p{r.partition}", total=r.size, completed=done[r.partition])

    def advance(self, partition: int, done: int) -> None:
        step = done - self._done.get(partition, 0)
        self._done[partition] = done
        if self._total is not None:
            self.progress.advance(self._total, step)
        if partition in self._tasks:
            self.progress.update(self._tasks[partition], completed=done)


def _progress_bar() -> Progress:
    return Progress(TextColumn("{task.description:>6}"), BarColumn(), MofNCompleteColumn(),
                    RateColumn(), TimeRemainingColumn(), console=err_console)


@replay_app.command("run")
def run(
    replay_id: Annotated[str, typer.Option(help="names the replay's group, state and tags")],
    from_spec: Annotated[str | None, typer.Option(
        "--from", help="earliest | now | offset:N | ts:MS | ISO time | -15m (new replays)")] = None,
    to_spec: Annotated[str | None, typer.Option(
        "--to", help="same forms; default now, snapshotted at start")] = None,
    source_topic: Annotated[str | None, typer.Option(
        help="default: the live transactions topic")] = None,
    output_topic: Annotated[str | None, typer.Option(
        help="default: <prefix>.replay.<id>.scores; created if missing")] = None,
    dead_letter_topic: Annotated[str | None, typer.Option(
        help="default: <output-topic>.dead-letter")] = None,
    model_version: Annotated[str | None, typer.Option(
        help="refuse to run unless the primary model has this version")] = None,
    primary_dir: Annotated[Path | None, typer.Option(help="another trained primary model")] = None,
    batch_size: Annotated[int, typer.Option(help="records per batch and transaction")] = 5000,
    deadline_s: Annotated[float, typer.Option(help="per-batch budget; 0 disables it")] = 5.0,
    dry_run: Annotated[bool, typer.Option(help="only report the range per partition")] = False,
    progress: Annotated[bool, typer.Option(help="show the progress bar")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    prefix: Prefix = None, bootstrap_servers: Bootstrap = None,
) -> None:
    """Re-score a bounded range of a topic, exactly once, into a replay topic."""
    from stream_app.replay.run import Replay, ReplayOptions
    from stream_app.replay.run import dry_run as plan_only

    s = _settings(bootstrap_servers, prefix)
    configure_logging(s.log.format, "warning" if progress or json_out else s.log.level)
    names = s.topics.names()
    output = output_topic or f"{s.topics.prefix}.replay.{replay_id}.scores"
    if output in names.all():
        _fail(f"--output-topic {output} is one of rung's live topics; choose a replay topic")
    options = _guard(lambda: ReplayOptions(
        replay_id, source_topic or names.transactions, output, dead_letter_topic, from_spec,
        to_spec, batch_size, deadline_s))
    if dry_run:
        resume, resumed = _guard(lambda: plan_only(s, options))
        _print_plan(resume, resumed, json_out)
        return
    from stream_app.replay.scoring import build_replay_scorer

    scorer, version = _guard(lambda: build_replay_scorer(
        s, model_version=model_version, primary_dir=primary_dir, deadline_s=deadline_s))
    bar = _progress_bar() if progress and not json_out else None
    replay = Replay(s, options, scorer, progress=RichProgress(bar) if bar is not None else None)
    previous = {sig: signal.signal(sig, lambda *_: replay.stop())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if bar is not None:
            with bar:
                summary = _guard(replay.run)
        else:
            summary = _guard(replay.run)
    finally:
        scorer.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if json_out:
        console.print_json(json.dumps({**asdict(summary), "model_version": version,
                                       "records_per_s": summary.records_per_s,
                                       "output_topic": output,
                                       "dead_letter_topic": options.dead_letters}))
    else:
        _print_summary(summary, version, output, options.dead_letters)
    raise typer.Exit(0 if summary.complete else EXIT_INCOMPLETE)


def _guard(call: Callable[[], T]) -> T:
    """Run `call`; turn the replay's expected failures into one clear line and exit 1."""
    from stream_app.kafka.errors import FatalError
    from stream_app.replay.range import RangeSpecError
    from stream_app.replay.run import ReplayError
    from stream_app.replay.scoring import ModelVersionError
    from stream_app.replay.state import ReplayStateError

    try:
        return call()
    except (ReplayError, ReplayStateError, RangeSpecError, ModelVersionError, ValueError,
            FatalError) as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _print_plan(resume: Resume, resumed: bool, json_out: bool) -> None:
    plan = resume.plan
    rows = [{"partition": r.partition, "start": r.start, "end": r.end, "records": r.size,
             "remaining": max(0, r.end - resume.positions[r.partition])} for r in plan.ranges]
    if json_out:
        console.print_json(json.dumps({"replay_id": plan.replay_id, "topic": plan.topic,
                                       "from": plan.from_spec, "to": plan.to_spec,
                                       "stored": resumed, "total": plan.total,
                                       "remaining": resume.remaining, "partitions": rows}))
        return
    title = (f"replay {plan.replay_id}: {plan.topic} from {plan.from_spec} to {plan.to_spec}"
             f" ({'stored range' if resumed else 'new range, not recorded'})")
    table = Table(title=title)
    for col in ("partition", "start", "end", "records", "remaining"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*(f"{v:,}" for v in row.values()))
    table.add_row("total", "", "", f"{plan.total:,}", f"{resume.remaining:,}", style="bold")
    console.print(table)


def _print_summary(summary: ReplaySummary, version: str, output: str, dead_topic: str) -> None:
    state = "complete" if summary.complete else "stopped before the end (run again to resume)"
    console.print(f"replay [bold]{summary.replay_id}[/] with primary {version}: {state}; "
                  f"{summary.records:,} records in {summary.elapsed_s:.1f}s "
                  f"({summary.records_per_s:,.0f} rec/s){' (resumed)' if summary.resumed else ''}")
    table = Table(title=f"by tier -> {output}")
    table.add_column("tier")
    table.add_column("scores", justify="right")
    table.add_column("share", justify="right")
    for tier, n in sorted(summary.by_tier.items(), key=lambda kv: -kv[1]):
        table.add_row(tier, f"{n:,}", f"{n / max(1, summary.records):.1%}")
    table.add_row(f"dead letters -> {dead_topic}", f"{summary.dead_letters:,}",
                  f"{summary.dead_letters / max(1, summary.records):.1%}")
    console.print(table)
    actions = ", ".join(f"{a} {n:,}" for a, n in sorted(summary.by_action.items()))
    console.print(f"actions: {actions or '-'}; batches {summary.batches}, aborted {summary.aborted}")


@replay_app.command("compare")
def compare_cmd(
    topic_a: Annotated[str, typer.Argument(help="e.g. the live scores topic or a replay's")],
    topic_b: Annotated[str | None, typer.Argument(
        help="the other score topic; omitted: TOPIC_A is a shadow topic, and its live "
             "answers are compared with its challenger's")] = None,
    replay_id_a: Annotated[str | None, typer.Option(help="only scores of this replay")] = None,
    replay_id_b: Annotated[str | None, typer.Option(help="only scores of this replay")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    bootstrap_servers: Bootstrap = None,
) -> None:
    """How many decisions flip between two score topics, matched by transaction id."""
    from stream_app.replay.compare import compare, read_side

    s = _settings(bootstrap_servers, None)
    configure_logging(s.log.format, "warning")
    conf = s.kafka.client_config()
    if topic_b is None:
        from stream_app.live.shadow_records import read_shadow_sides

        side_a, side_b = read_shadow_sides(conf, topic_a)
        topic_a, topic_b = f"{topic_a} (champion)", f"{topic_a} (challenger)"
    else:
        side_a, side_b = read_side(conf, topic_a, replay_id_a), read_side(conf, topic_b,
                                                                          replay_id_b)
    result = compare(side_a, side_b)
    if json_out:
        console.print_json(json.dumps(comparison_dict(result)))
        return
    print_comparison(result, topic_a, topic_b)


def comparison_dict(c: Comparison) -> dict[str, object]:
    return {"matched": c.matched, "only_a": c.only_a, "only_b": c.only_b, "flipped": c.flipped,
            "stricter": c.stricter, "looser": c.looser, "duplicates_a": c.duplicates_a,
            "duplicates_b": c.duplicates_b,
            "flips": [{"from": a.value, "to": b.value, "count": n} for a, b, n in c.flips()]}


def print_comparison(c: Comparison, topic_a: str, topic_b: str) -> None:
    table = Table(title=f"decision flips {topic_a} -> {topic_b} (matched by transaction id)")
    table.add_column("from -> to")
    table.add_column("direction")
    table.add_column("count", justify="right")
    table.add_column("of matched", justify="right")
    for a, b, n in c.flips():
        way = "stricter" if SEVERITY[b] > SEVERITY[a] else "looser"
        table.add_row(f"{a.value} -> {b.value}", way, f"{n:,}", f"{n / max(1, c.matched):.2%}")
    table.add_row("all flips", f"{c.stricter:,} stricter / {c.looser:,} looser", f"{c.flipped:,}",
                  f"{c.flipped / max(1, c.matched):.2%}", style="bold")
    console.print(table)
    console.print(f"matched {c.matched:,}; only in {topic_a}: {c.only_a:,}; "
                  f"only in {topic_b}: {c.only_b:,}; duplicates {c.duplicates_a:,} / "
                  f"{c.duplicates_b:,}")


if __name__ == "__main__":
    sys.exit(app())
