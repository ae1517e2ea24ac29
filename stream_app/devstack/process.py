"""`rung run` as a child process: what the demo, the tests and the benchmarks start.

The child gets its settings through `RUNG_*` environment variables and serves
`/readyz` on a free port, which is how the parent knows it has partitions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from stream_app.devstack.pids import free_port


class WorkerProcess:
    """`rung run` as a child process, with its metrics port known."""

    def __init__(self, bootstrap: str, redis_url: str | None, prefix: str, *,
                 group: str | None = None, runtime: str = "confluent",
                 env: dict[str, str] | None = None, capture_logs: bool = True) -> None:
        self.port = free_port()
        # Logs go to a file, never a pipe: a chatty child must not block on a full pipe.
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the child
            prefix="rung-worker-", suffix=".log", delete=False)
        # A pod name in this process's environment would give every child the same
        # default transactional id (they would fence each other): children never inherit it.
        inherited = {k: v for k, v in os.environ.items() if k != "POD_NAME"}
        full_env = {**inherited,
                    "RUNG_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                    **({"RUNG_REDIS__URL": redis_url} if redis_url else {}),
                    "RUNG_TOPICS__PREFIX": prefix,
                    "RUNG_KAFKA__GROUP_ID": group or f"{prefix}-scorer",
                    "RUNG_METRICS__PORT": str(self.port),
                    "RUNG_LOG__FORMAT": "json" if capture_logs else "console",
                    **(env or {})}
        out = self._log if capture_logs else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app.cli.app", "run", "--runtime", runtime],
            env=full_env, stdout=out, stderr=out)

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
        """The tail of the child's log (stdout and stderr together)."""
        try:
            with open(self._log.name, "rb") as fh:
                return fh.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""
