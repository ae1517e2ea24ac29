"""The faults stack's broker configuration and the Toxiproxy client, without a broker:
the client against a stand-in HTTP server that records what it was asked."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from stream_app.devstack.kafka_files import PROXIED_LISTENER, server_properties
from stream_app.devstack.toxiproxy import ToxiproxyClient, ToxiproxyError


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_default_broker_has_no_proxied_listener() -> None:
    p = _props(server_properties(Path("/d"), 9092, 9093))
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert p["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert PROXIED_LISTENER not in p["listener.security.protocol.map"]


def test_proxied_listener_binds_upstream_and_advertises_the_proxy() -> None:
    p = _props(server_properties(Path("/d"), 9092, 9093, proxied=(9100, "127.0.0.1:9200")))
    assert f"{PROXIED_LISTENER}://127.0.0.1:9100" in p["listeners"].split(",")
    advertised = p["advertised.listeners"].split(",")
    assert f"{PROXIED_LISTENER}://127.0.0.1:9200" in advertised
    assert "PLAINTEXT://127.0.0.1:9092" in advertised  # the direct listener stays
    assert f"{PROXIED_LISTENER}:PLAINTEXT" in p["listener.security.protocol.map"]
    assert p["inter.broker.listener.name"] == "PLAINTEXT"


class _Api(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, Any]] = []

    def _answer(self, method: str) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(size)) if size else None
        self.calls.append((method, self.path, body))
        if self.path == "/proxies/missing":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error":"proxy not found"}')
            return
        out: Any = {}
        if method == "POST" and self.path == "/proxies":
            out = {**body, "listen": "127.0.0.1:41000"}
        elif self.path.endswith("/toxics") and method == "GET":
            out = [{"name": "latency_downstream"}]
        elif self.path == "/version":
            out = {"version": "2.12.0"}
        data = json.dumps(out).encode()
        self.send_response(201 if method == "POST" else 200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._answer("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._answer("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._answer("DELETE")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[tuple[ToxiproxyClient, list[tuple[str, str, Any]]]]:
    _Api.calls = []
    server = HTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ToxiproxyClient(f"http://127.0.0.1:{server.server_address[1]}"), _Api.calls
    finally:
        server.shutdown()


def test_client_speaks_the_v2_api(api: tuple[ToxiproxyClient, list[Any]]) -> None:
    client, calls = api
    assert client.answers() and client.version() == "2.12.0"
    made = client.create_proxy("kafka", "127.0.0.1:9100")
    assert made["listen"] == "127.0.0.1:41000"
    assert client.latency("kafka", 200) == "latency_downstream"
    client.bandwidth("kafka", 32, stream="upstream")
    client.timeout("kafka", 0)
    client.reset_peer("redis", 0)
    client.slicer("kafka", 64, 16, 10)
    client.set_enabled("kafka", False)
    client.clear_toxics("kafka")
    client.reset()
    posted = [(p, b) for m, p, b in calls if m == "POST"]
    assert ("/proxies", {"name": "kafka", "listen": "127.0.0.1:0",
                         "upstream": "127.0.0.1:9100", "enabled": True}) in posted
    toxics = [b for p, b in posted if p.endswith("/toxics")]
    assert [(t["type"], t["stream"], t["attributes"]) for t in toxics] == [
        ("latency", "downstream", {"latency": 200, "jitter": 0}),
        ("bandwidth", "upstream", {"rate": 32}),
        ("timeout", "downstream", {"timeout": 0}),
        ("reset_peer", "downstream", {"timeout": 0}),
        ("slicer", "downstream", {"average_size": 64, "size_variation": 16, "delay": 10}),
    ]
    assert ("/proxies/kafka", {"enabled": False}) in posted
    assert ("DELETE", "/proxies/kafka/toxics/latency_downstream", None) in calls
    assert ("/reset", None) in posted


def test_client_errors_name_the_call(api: tuple[ToxiproxyClient, list[Any]]) -> None:
    client, _ = api
    with pytest.raises(ToxiproxyError, match="404"):
        client.proxy("missing")
