"""The local stack's processes: ports, Java, the tool cache, liveness and stopping.

Shared by the Kafka/Redis stack (`devstack.stack`) and the schema registry
(`devstack.registry`); each service is started in its own session, so its pid leads a
process group that is signalled whole.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

__all__ = ["alive", "cache_dir", "free_port", "java", "signal_group", "stop_pid"]


def cache_dir() -> Path:
    """Where built tools and fetched jars are kept, once per machine (`RUNG_CACHE_DIR`)."""
    return Path(os.environ.get("RUNG_CACHE_DIR", Path.home() / ".cache" / "rung"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def java(error: type[Exception], purpose: str) -> str:
    """The `java` on PATH, else `error` saying what it was needed for."""
    path = shutil.which("java")
    if path is None:
        raise error(f"java is needed to run {purpose} (Java 17+)")
    return path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


def signal_group(pid: int, sig: signal.Signals) -> bool:
    """Signal the process group `pid` leads, else the process; False if it is gone."""
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False


def stop_pid(pid: int, timeout_s: float) -> None:
    """SIGTERM the group, SIGKILL it after `timeout_s`; a child of ours is reaped."""
    if not alive(pid) or not signal_group(pid, signal.SIGTERM):
        return
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if not alive(pid):
            return
        time.sleep(0.1)
    signal_group(pid, signal.SIGKILL)
