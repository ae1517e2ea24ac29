"""Reloading the policy file while the worker runs (`scorers.policy`, docs/policy.md).

`open_policy(path, listener)` loads the policy at start: an unusable file stops the
worker before it takes partitions (`PolicyError`). `PolicyWatcher` then polls the file
on a daemon thread every `poll_interval_s`: a stat, and a read + hash + parse only when
the stat changed, never on the scoring thread. A valid new policy replaces the holder's
reference (the ladder picks it up at its next batch); an invalid one is refused, logged
and counted (`rung_policy_reloads_total{outcome="refused"}`), and the old policy stays.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import structlog

from scorers.policy import PolicyError, PolicyFile, PolicyHolder, PolicyListener

log = structlog.get_logger(__name__)


def open_policy(path: Path | None,
                listener: PolicyListener | None = None) -> tuple[PolicyHolder, PolicyFile | None]:
    """The holder with the file's policy (or the built-in one when `path` is None)."""
    listener = listener or PolicyListener()
    if path is None:
        holder = PolicyHolder()
        listener.on_policy_applied(None)
        return holder, None
    policy_file = PolicyFile(path)
    policy = policy_file.load()
    log.info("policy_loaded", path=str(path), version=policy.version,
             review_rules=[r.name for r in policy.review_rules])
    listener.on_policy_applied(policy.version)
    return PolicyHolder(policy), policy_file


class PolicyWatcher:
    def __init__(self, holder: PolicyHolder, policy_file: PolicyFile, interval_s: float,
                 listener: PolicyListener | None = None) -> None:
        self.holder = holder
        self.file = policy_file
        self.interval_s = interval_s
        self.listener = listener or PolicyListener()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """One poll: True when a new policy was installed."""
        try:
            policy = self.file.poll()
        except PolicyError as exc:
            log.error("policy_reload_refused", path=str(self.file.path), error=str(exc),
                      version_kept=self.holder.current.version)
            self.listener.on_policy_refused(str(exc))
            return False
        if policy is None:
            return False
        old = self.holder.swap(policy)
        log.info("policy_reloaded", path=str(self.file.path), version=policy.version,
                 previous=old.version)
        self.listener.on_policy_applied(policy.version)
        return True

    def start(self) -> PolicyWatcher:
        self._thread = threading.Thread(target=self._run, name="rung-policy-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive a bug; logged
                log.exception("policy_watch_failed", path=str(self.file.path))


def watch_policy(owner: object, holder: PolicyHolder, policy_file: PolicyFile,
                 interval_s: float, listener: PolicyListener | None = None) -> PolicyWatcher:
    """Start a watcher that stops when `owner` (the ladder) is collected."""
    watcher = PolicyWatcher(holder, policy_file, interval_s, listener).start()
    weakref.finalize(owner, watcher.stop, 0.0)
    return watcher
