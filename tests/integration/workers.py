"""Helpers for integration tests that run real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

from stream_app.readback import Record, read_topic
from stream_app.stack import free_port
from topics.catalog import TopicNames
from topics.codec import decode_dead_letter
from topics.schemas import Transaction


class WorkerProcess:
    """`rung run` as a child process, with its metrics port known."""

    def __init__(self, bootstrap: str, redis_url: str, prefix: str, *, group: str | None = None,
                 runtime: str = "confluent", env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        full_env = {**os.environ,
                    "RUNG_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                    "RUNG_REDIS__URL": redis_url,
                    "RUNG_TOPICS__PREFIX": prefix,
                    "RUNG_KAFKA__GROUP_ID": group or f"{prefix}-scorer",
                    "RUNG_METRICS__PORT": str(self.port),
                    "RUNG_LOG__FORMAT": "json",
                    **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app.cli", "run", "--runtime", runtime],
            env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.stderr()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("worker did not become ready")

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return str(r.read().decode())

    def terminate(self, timeout_s: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stderr(self) -> str:
        if self.proc.stderr is None or self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-4000:]


def simple_events(n: int, prefix: str = "tx", start: int = 0) -> Iterator[Transaction]:
    """Valid, varied transactions (no simulator needed)."""
    mccs = ("5411", "5812", "7995", "6051", "5999")
    channels = ("pos", "ecom", "mobile", "atm")
    for i in range(start, start + n):
        yield Transaction(
            transaction_id=f"{prefix}-{i}", event_time_s=time.time(), customer_id=f"c{i % 977}",
            terminal_id=f"t{i % 1999}", amount=float(5 + (i * 37) % 400), currency="EUR",
            merchant_category=mccs[i % len(mccs)], is_international=i % 11 == 0,
            has_international_history=i % 3 == 0, account_age_days=(i * 13) % 3000,
            channel=channels[i % len(channels)])


def answered(conf: dict[str, Any], names: TopicNames,
             timeout_s: float = 60.0) -> tuple[list[Record], list[Record]]:
    return (read_topic(conf, names.scores, timeout_s),
            read_topic(conf, names.dead_letter, timeout_s))


def wait_for_answers(conf: dict[str, Any], names: TopicNames, expected: int,
                     timeout_s: float = 120.0) -> tuple[list[Record], list[Record]]:
    """Poll committed outputs until `expected` answers are there (or time runs out)."""
    end = time.monotonic() + timeout_s
    while True:
        scores, dead = answered(conf, names)
        if len(scores) + len(dead) >= expected or time.monotonic() > end:
            return scores, dead
        time.sleep(1.0)


def exactly_once_report(keys: list[bytes], scores: list[Record],
                        dead: list[Record]) -> tuple[int, int]:
    """(missing, duplicated) over the expected keys, counting scores and dead letters."""
    seen = Counter(r.key for r in scores)
    seen.update(decode_dead_letter(r.value).original_key for r in dead if r.value)
    missing = sum(1 for k in keys if seen[k] == 0)
    dups = sum(c - 1 for c in seen.values() if c > 1)
    return missing, dups
