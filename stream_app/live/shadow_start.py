"""The worker's shadow, as configured (docs/shadow.md): nothing, the whole shadow in a
child process at idle priority (`stream_app.live.shadow_child`, the default), or a
`ShadowRunner` on a thread of the worker (`stream_app.live.shadow`)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Final, Protocol

from stream_app.config import Settings
from stream_app.live.shadow import NoReport, ShadowReport, build_runner, references
from stream_app.live.shadow_child import ShadowProcess
from stream_app.live.shadow_tap import tap_of
from stream_app.pipeline import BatchOutcome


class Shadow(Protocol):
    """What the worker holds: `ShadowProcess`, `ShadowRunner` or `NO_SHADOW`."""

    def offer(self, outcome: BatchOutcome) -> bool: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def stop(self, timeout_s: float = 3.0) -> None: ...


class NoShadow:
    """What the worker holds when neither a challenger nor a drift reference is set."""

    def offer(self, outcome: BatchOutcome) -> bool:
        return True

    def pause(self) -> None:
        return None

    def resume(self) -> None:
        return None

    def stop(self, timeout_s: float = 3.0) -> None:
        return None


NO_SHADOW: Final = NoShadow()
_REPORTS: weakref.WeakKeyDictionary[Any, ShadowReport] = weakref.WeakKeyDictionary()


def report_for(metrics: object) -> ShadowReport:
    """`ShadowMetrics` on the worker's `Metrics` registry (once per registry)."""
    registry = getattr(metrics, "registry", None)
    if registry is None:
        return NoReport()
    report = _REPORTS.get(registry)
    if report is None:
        from stream_app.shadow_metrics import ShadowMetrics

        report = _REPORTS[registry] = ShadowMetrics(registry)
    return report


def start(settings: Settings, ladder: object, metrics: object = None,
          producer_conf: Callable[[Settings], dict[str, Any]] | None = None,
          ) -> Shadow:
    """The worker's shadow, when a challenger or a drift reference is set: all of it in
    a child process at idle priority (`executor=process`) or on a thread of the worker
    (`executor=thread`)."""
    s = settings.shadow
    if s.model_dir is None and not (s.drift and references(settings)):
        return NO_SHADOW
    report = report_for(metrics)
    if s.executor == "process":
        return ShadowProcess(settings, report, tap_of(ladder)).start()
    runner = build_runner(settings, tap_of(ladder), report, producer_conf=producer_conf)
    return runner.start() if runner is not None else NO_SHADOW
