"""HTTP endpoints of a worker: `/metrics`, `/healthz` and `/readyz`.

A small threaded server from the standard library, run in a daemon thread so
it never shares the scoring loop's thread.
- `/metrics`: the registry in Prometheus text format (OpenMetrics when asked).
- `/healthz`: 200 while the process is alive and has no fatal error, else 503
  (the supervisor restarts it).
- `/readyz`: 200 when partitions are assigned, nothing is fatal and the
  optional `ready` callback agrees; else 503 with the reason.
- `/admin/faults` (GET, POST a JSON body, DELETE to heal): the fault
  switchboard (`stream_app.ops.faults_admin`). 403 unless the server was given one,
  i.e. unless fault injection was enabled (`RUNG_ADMIN__FAULTS_ENABLED=true`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.exposition import choose_encoder

from stream_app.metrics import Metrics

if TYPE_CHECKING:
    from stream_app.ops.faults_admin import Switchboard

ReadyCheck = Callable[[], tuple[bool, str]]
ADMIN_FAULTS_PATH = "/admin/faults"
MAX_ADMIN_BODY_BYTES = 64 * 1024
FAULTS_DISABLED = b'{"error": "fault injection is disabled: start the worker with --faults"}'


class MetricsServer:
    """Serves a `Metrics` over HTTP. `port=0` binds a free port; read it from `.port`."""

    def __init__(
        self,
        metrics: Metrics,
        host: str = "127.0.0.1",
        port: int = 9464,
        ready: ReadyCheck | None = None,
        faults: Switchboard | None = None,
    ) -> None:
        self._metrics = metrics
        self.faults = faults
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


    def admin_faults(self, method: str, body: bytes) -> tuple[int, bytes]:
        """One `/admin/faults` request: (HTTP status, JSON body)."""
        from stream_app.ops.faults_admin import FaultSpecError

        faults = self.faults
        if faults is None:
            return 403, FAULTS_DISABLED
        try:
            if method == "GET":
                state: dict[str, Any] = faults.snapshot()
            elif method == "DELETE":
                state = faults.heal()
            else:
                state = faults.apply(orjson.loads(body or b"{}"))
        except (orjson.JSONDecodeError, FaultSpecError) as exc:
            return 400, orjson.dumps({"error": str(exc)})
        return 200, orjson.dumps(state)


def _handler_for(owner: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self._admin("POST")

        def do_DELETE(self) -> None:  # noqa: N802 - http.server's naming
            self._admin("DELETE")

        def _admin(self, method: str) -> None:
            if self.path.split("?", 1)[0] != ADMIN_FAULTS_PATH:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_ADMIN_BODY_BYTES:
                self._send(413, b'{"error": "body too large"}', "application/json")
                return
            body = self.rfile.read(length) if length > 0 else b""
            status, reply = owner.admin_faults(method, body)
            self._send(status, reply, "application/json")

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == ADMIN_FAULTS_PATH:
                status, reply = owner.admin_faults("GET", b"")
                self._send(status, reply, "application/json")
            elif path == "/metrics":
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
