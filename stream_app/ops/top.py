"""`rung top`: a live terminal view of running workers, read from their `/metrics`.

Each refresh scrapes every worker's text exposition, parses it with
`prometheus_client.parser`, and turns two consecutive scrapes into rates:
records in and scores out per second, the share of each tier, dead letters
and review flags per second, event-to-score latency p50/p99 (from the
histogram's bucket deltas, as `histogram_quantile` does), consumer lag per
partition and breaker states. `--once` scrapes twice, prints one frame, exits.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

TIERS: tuple[str, ...] = ("cache", "primary", "fallback", "rules", "default")
LATENCY = "rung_event_to_score_latency_seconds_bucket"

LabelSet = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, LabelSet], float]
Fetch = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class Scrape:
    """One worker's samples at one moment (`error` set when the scrape failed)."""

    url: str
    taken_at_s: float
    samples: Samples = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What one frame shows for one worker."""

    url: str
    error: str | None = None
    in_per_s: float = 0.0
    out_per_s: float = 0.0
    tier_per_s: Mapping[str, float] = field(default_factory=dict)
    dead_letter_per_s: float = 0.0
    review_per_s: float = 0.0
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    lag_by_partition: Mapping[tuple[str, str], float] = field(default_factory=dict)
    breakers: Mapping[str, str] = field(default_factory=dict)

    @property
    def lag_total(self) -> float:
        return sum(self.lag_by_partition.values())


def parse_exposition(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return samples


def metrics_url(url: str) -> str:
    url = url if "://" in url else f"http://{url}"
    return url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"


def http_fetch(url: str, timeout_s: float = 2.0) -> str:
    req = urllib.request.Request(url, headers={"Accept": "text/plain"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        body: bytes = resp.read()
    return body.decode("utf-8")


def scrape(url: str, fetch: Fetch, clock: Callable[[], float]) -> Scrape:
    try:
        text = fetch(url)
    except Exception as exc:  # noqa: BLE001 - a dead worker is shown, not fatal
        return Scrape(url, clock(), error=f"{type(exc).__name__}: {exc}")
    try:
        return Scrape(url, clock(), parse_exposition(text))
    except ValueError as exc:
        return Scrape(url, clock(), error=f"bad exposition: {exc}")


def _sum(samples: Samples, name: str, where: Callable[[dict[str, str]], bool] | None = None,
         by: str | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n != name:
            continue
        d = dict(labels)
        if where is not None and not where(d):
            continue
        key = d.get(by, "") if by else ""
        out[key] = out.get(key, 0.0) + v
    return out


def _deltas(prev: Samples, cur: Samples, name: str, by: str | None = None) -> dict[str, float]:
    """Counter increase per group; a counter that went down was reset: count from 0."""
    before = {k: v for k, v in prev.items() if k[0] == name}
    out: dict[str, float] = {}
    for key, v in cur.items():
        if key[0] != name:
            continue
        old = before.get(key, 0.0)
        inc = v - old if v >= old else v
        group = dict(key[1]).get(by, "") if by else ""
        out[group] = out.get(group, 0.0) + inc
    return out


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Quantile from cumulative bucket counts keyed by upper bound (inf included)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower  # past the last finite bucket: its bound is the best we know
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _latency_buckets(prev: Samples, cur: Samples) -> dict[float, float]:
    deltas = _deltas(prev, cur, LATENCY, by="le")
    buckets = {float(le): v for le, v in deltas.items()}
    if buckets and max(buckets.values()) > 0:
        return buckets
    return {float(le): v for le, v in _sum(cur, LATENCY, by="le").items()}  # idle: all-time


def worker_view(prev: Scrape, cur: Scrape) -> WorkerView:
    if cur.error is not None or prev.error is not None:
        return WorkerView(cur.url, error=cur.error or prev.error)
    dt = max(cur.taken_at_s - prev.taken_at_s, 1e-9)
    p, c = prev.samples, cur.samples
    tiers = {t: v / dt for t, v in _deltas(p, c, "rung_scores_total", by="tier").items()}
    lat = _latency_buckets(p, c)
    lag = {(d["topic"], d["partition"]): v for (n, labels), v in c.items()
           if n == "rung_consumer_lag_records" for d in (dict(labels),)}  # fmt: skip
    breakers = {dep: state for (n, labels), v in c.items()
                if n == "rung_breaker_state" and v == 1
                for dep, state in ((dict(labels)["dependency"], dict(labels)["state"]),)}  # fmt: skip
    return WorkerView(
        url=cur.url,
        in_per_s=sum(_deltas(p, c, "rung_records_in_total").values()) / dt,
        out_per_s=sum(tiers.values()),
        tier_per_s=tiers,
        dead_letter_per_s=sum(_deltas(p, c, "rung_dead_letter_total").values()) / dt,
        review_per_s=sum(_deltas(p, c, "rung_review_flags_total").values()) / dt,
        latency_p50_s=histogram_quantile(0.5, lat),
        latency_p99_s=histogram_quantile(0.99, lat),
        lag_by_partition=lag,
        breakers=breakers,
    )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def render(views: Sequence[WorkerView]) -> Group:
    workers = Table(title="rung workers", expand=False)
    for col in ("worker", "in/s", "out/s", *TIERS, "dead/s", "review/s", "lag", "p50", "p99"):
        workers.add_column(col, justify="left" if col == "worker" else "right")
    for v in views:
        if v.error is not None:
            workers.add_row(v.url, f"[red]down: {v.error}[/red]")
            continue
        shares = [_share(v.tier_per_s.get(t, 0.0), v.out_per_s) for t in TIERS]
        workers.add_row(v.url, f"{v.in_per_s:.1f}", f"{v.out_per_s:.1f}", *shares,
                        f"{v.dead_letter_per_s:.2f}", f"{v.review_per_s:.2f}",
                        f"{v.lag_total:.0f}", _ms(v.latency_p50_s), _ms(v.latency_p99_s))  # fmt: skip
    breakers = Table(title="circuit breakers")
    for col in ("worker", "dependency", "state"):
        breakers.add_column(col)
    for v in views:
        for dep, state in sorted(v.breakers.items()):
            color = "green" if state == "closed" else "yellow" if state == "half_open" else "red"
            breakers.add_row(v.url, dep, f"[{color}]{state}[/{color}]")
    lag = Table(title="consumer lag")
    for col in ("topic", "partition", "lag", "worker"):
        lag.add_column(col, justify="right" if col == "lag" else "left")
    for v in views:
        for (topic, part), n in sorted(v.lag_by_partition.items(), key=lambda kv: (kv[0][0], int(kv[0][1]))):
            lag.add_row(topic, part, f"{n:.0f}", v.url)
    return Group(workers, breakers, lag)


def _share(rate: float, total: float) -> str:
    return f"{rate:.1f} ({rate / total:.0%})" if total > 0 else f"{rate:.1f}"


def top(
    urls: Iterable[str],
    interval_s: float = 2.0,
    once: bool = False,
    *,
    fetch: Fetch = http_fetch,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    console: Console | None = None,
    frames: int | None = None,
) -> int:
    """Show workers' metrics; `once` prints one frame (two scrapes `interval_s` apart)."""
    targets = [metrics_url(u) for u in urls]
    if not targets:
        raise ValueError("give at least one worker URL")
    console = console or Console()
    prev = [scrape(u, fetch, clock) for u in targets]

    def step() -> Group:
        nonlocal prev
        sleep(interval_s)
        cur = [scrape(u, fetch, clock) for u in targets]
        views = [worker_view(a, b) for a, b in zip(prev, cur, strict=True)]
        prev = cur
        return render(views)

    if once:
        console.print(step())
        return 0
    shown = 0
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while frames is None or shown < frames:
            live.update(step())
            shown += 1
    return 0


app = typer.Typer(help="Live view of rung workers.")


@app.command("top")
def top_command(
    urls: Annotated[list[str], typer.Argument(help="worker metrics URLs, e.g. http://127.0.0.1:9464")],
    interval: Annotated[float, typer.Option(help="seconds between scrapes")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False,
) -> None:
    """Tier rates, lag, latency and breaker states of one or more workers."""
    try:
        top(urls, interval_s=interval, once=once)
    except KeyboardInterrupt:
        pass
