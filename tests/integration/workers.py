"""Helpers for integration tests that run real worker processes."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from stream_app.devstack.produce import synthetic_events
from stream_app.kafka.readback import Record, read_topic
from topics.catalog import TopicNames
from topics.codec import decode_dead_letter

simple_events = synthetic_events  # the name the tests use


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
