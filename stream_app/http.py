"""HTTP endpoints of a worker: `/metrics`, `/healthz` and `/readyz`.

A small threaded server from the standard library, run in a daemon thread so
it never shares the scoring loop's thread.
- `/metrics`: the registry in Prometheus text format (OpenMetrics when asked).
- `/healthz`: 200 while the process is alive and has no fatal error, else 503
  (the supervisor restarts it).
- `/readyz`: 200 when partitions are assigned, nothing is fatal and the
  optional `ready` callback agrees; else 503 with the reason.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import choose_encoder

from stream_app.metrics import Metrics

ReadyCheck = Callable[[], tuple[bool, str]]


class MetricsServer:
    """Serves a `Metrics` over HTTP. `port=0` binds a free port; read it from `.port`."""

    def __init__(
        self,
        metrics: Metrics,
        host: str = "127.0.0.1",
        port: int = 9464,
        ready: ReadyCheck | None = None,
    ) -> None:
        self._metrics = metrics
        self._host = host
        self._requested_port = port
        self._ready = ready
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("MetricsServer is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> None:
        if self._server is not None:
            return
        server = ThreadingHTTPServer((self._host, self._requested_port), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.1,), name="rung-metrics-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the handler asks --------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        fatal = self._metrics.fatal_reason
        return (False, f"fatal: {fatal}") if fatal is not None else (True, "alive")

    def readiness(self) -> tuple[bool, str]:
        ok, reason = self._metrics.readiness()
        if not ok or self._ready is None:
            return ok, reason
        try:
            return self._ready()
        except Exception as exc:  # noqa: BLE001 - a failing check means not ready
            return False, f"ready check failed: {type(exc).__name__}"

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._metrics.registry), content_type


def _handler_for(owner: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, content_type = owner.exposition(self.headers.get("Accept"))
                self._send(200, body, content_type)
            elif path == "/healthz":
                self._send_check(owner.health())
            elif path == "/readyz":
                self._send_check(owner.readiness())
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send_check(self, check: tuple[bool, str]) -> None:
            ok, reason = check
            self._send(200 if ok else 503, f"{reason}\n".encode(), "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return  # scrapes every second would flood the log

    return Handler
