"""The worker's GIL settings: the switch interval and the label feed's pacing
(stream_app/live/gil.py). No broker, no sleeps: the CPU clock is a fake."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

import stream_app.features.labels as labels
from stream_app.config import Settings
from stream_app.features.labels import LabelFeed
from stream_app.live.gil import Pacer, set_switch_interval


class FakeCpu:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_pause_makes_the_step_its_share_of_the_wall_time() -> None:
    cpu = FakeCpu()
    pacer = Pacer(0.25, cpu_clock=cpu)
    pacer.start()
    cpu.now += 0.03  # a step that cost 30 ms of CPU
    pause = pacer.pause_s()
    assert pause == pytest.approx(0.09)
    assert 0.03 / (0.03 + pause) == pytest.approx(0.25)
    pacer.start()  # blocked time (a poll waiting for records) is not on the CPU clock
    assert pacer.pause_s() == 0.0
    assert pacer.paused_s == pytest.approx(0.09)


def test_a_share_of_one_never_pauses_and_long_steps_pause_at_most_the_cap() -> None:
    cpu = FakeCpu()
    free = Pacer(1.0, cpu_clock=cpu)
    free.start()
    cpu.now += 5.0
    assert free.pause_s() == 0.0
    capped = Pacer(0.1, cpu_clock=cpu, max_pause_s=0.5)
    capped.start()
    cpu.now += 2.0
    assert capped.pause_s() == 0.5


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="busy share"):
        Pacer(share)


@pytest.fixture
def interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_the_switch_interval_is_set_and_the_old_one_returned(interval: None) -> None:
    sys.setswitchinterval(0.005)
    assert set_switch_interval(0.0005) == pytest.approx(0.005)
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    with pytest.raises(ValueError, match="positive"):
        set_switch_interval(0.0)


def test_the_process_settings_default_to_a_short_interval_and_a_paced_label_feed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.process.gil_switch_interval_s == 0.0005
    assert s.process.label_feed_busy_share == 0.25
    monkeypatch.setenv("RUNG_PROCESS__GIL_SWITCH_INTERVAL_S", "0.002")
    monkeypatch.setenv("RUNG_PROCESS__LABEL_FEED_BUSY_SHARE", "1")
    s = Settings()
    assert (s.process.gil_switch_interval_s, s.process.label_feed_busy_share) == (0.002, 1.0)


class ScriptedPacer(Pacer):
    """Records the order of start/pause around the feed's polls; never pauses."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__(0.5, cpu_clock=FakeCpu())
        self.calls = calls

    def start(self) -> None:
        self.calls.append("start")

    def pause_s(self) -> float:
        self.calls.append("pause")
        return 0.0


def test_the_label_feed_paces_every_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    feed: LabelFeed

    class FakeConsumer:
        def __init__(self, conf: dict[str, Any]) -> None:
            self.polls = 0

        def subscribe(self, topics: list[str], **_: Any) -> None:
            pass

        def consume(self, n: int, timeout: float) -> list[Any]:
            calls.append("consume")
            self.polls += 1
            if self.polls == 3:
                feed._stop.set()
            return []

        def close(self) -> None:
            calls.append("close")

    class IdleApplier:
        def in_backoff(self) -> bool:
            return False

    monkeypatch.setattr(labels, "Consumer", FakeConsumer)
    feed = LabelFeed({}, "labels", applier=IdleApplier())  # type: ignore[arg-type]
    feed.pacer = ScriptedPacer(calls)
    feed._run()
    assert calls == ["start", "consume", "pause"] * 3 + ["close"]
    assert LabelFeed({}, "t", applier=None, busy_share=0.25).pacer.share == 0.25  # type: ignore[arg-type]
