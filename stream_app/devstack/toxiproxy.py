"""Toxiproxy for the local stack: network faults on a real TCP path.

Shopify's Toxiproxy (v2) is a TCP proxy whose links can be made slow, thin, cut or
reset at run time over an HTTP API. It is built once per machine from the Go module
proxy, pinned, and cached next to the Kafka jars:

    GOBIN=~/.cache/rung/toxiproxy-2.12.0 go install github.com/Shopify/toxiproxy/v2/cmd/server@v2.12.0

(`toxiproxy_server()` does exactly that and renames `server` to `toxiproxy-server`;
`make setup` calls it). `start_toxiproxy()` runs the server on a free loopback port;
`ToxiproxyClient` is a small client of its API (plain urllib + json): proxies
(create, enable/disable, delete) and toxics (`latency`, `bandwidth`, `timeout`,
`reset_peer`, `slicer`, ...: add, remove).

API reference: https://github.com/Shopify/toxiproxy#http-api
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from stream_app.devstack.pids import cache_dir

log = structlog.get_logger(__name__)

TOXIPROXY_VERSION = "2.12.0"
TOXIPROXY_MODULE = "github.com/Shopify/toxiproxy/v2"
SERVER_NAME = "toxiproxy-server"


class ToxiproxyError(RuntimeError):
    """Toxiproxy could not be built, started or driven."""


def toxiproxy_server(version: str = TOXIPROXY_VERSION) -> Path:
    """Return the `toxiproxy-server` binary, building it with `go install` once.

    `RUNG_TOXIPROXY_SERVER` points at a binary to use instead (nothing is built)."""
    override = os.environ.get("RUNG_TOXIPROXY_SERVER")
    if override:
        path = Path(override)
        if not os.access(path, os.X_OK):
            raise ToxiproxyError(f"RUNG_TOXIPROXY_SERVER={override} is not an executable")
        return path
    bindir = cache_dir() / f"toxiproxy-{version}"
    exe = bindir / SERVER_NAME
    if os.access(exe, os.X_OK):
        return exe
    go = shutil.which("go")
    if go is None:
        raise ToxiproxyError("Go is needed once to build Toxiproxy (go install); install Go 1.22+")
    tmp = bindir.with_name(bindir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = {**os.environ, "GOBIN": str(tmp), "GOFLAGS": "-mod=mod", "GO111MODULE": "on"}
    cmd = [go, "install", f"{TOXIPROXY_MODULE}/cmd/server@v{version}"]
    log.info("toxiproxy_build", version=version, into=str(bindir))
    # run outside any module so that `go install pkg@version` ignores the cwd's go.mod
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    built = tmp / "server"
    if proc.returncode != 0 or not built.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise ToxiproxyError(f"building Toxiproxy {version} failed:\n{proc.stdout}\n{proc.stderr}")
    built.rename(tmp / SERVER_NAME)
    shutil.rmtree(bindir, ignore_errors=True)
    tmp.rename(bindir)
    return exe


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_toxiproxy(run_dir: Path, port: int | None = None,
                    timeout_s: float = 15.0) -> tuple[int, str]:
    """Start `toxiproxy-server` on a free loopback port; (pid, API base URL) once it answers."""
    exe = toxiproxy_server()
    run_dir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    with (run_dir / "toxiproxy.log").open("ab") as out:
        proc = subprocess.Popen([str(exe), "-host", "127.0.0.1", "-port", str(port)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=run_dir)
    api = f"http://127.0.0.1:{port}"
    client = ToxiproxyClient(api)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise ToxiproxyError(f"toxiproxy-server exited with {proc.returncode}; "
                                 f"see {run_dir / 'toxiproxy.log'}")
        if client.answers():
            return proc.pid, api
        time.sleep(0.1)
    proc.kill()
    raise ToxiproxyError(f"toxiproxy-server did not answer on {api} in {timeout_s:.0f}s")


class ToxiproxyClient:
    """A client of Toxiproxy's HTTP API (v2)."""

    def __init__(self, api: str, timeout_s: float = 10.0) -> None:
        self.api = api.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.api}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ToxiproxyError(f"{method} {path}: HTTP {exc.code} {detail}") from exc
        return json.loads(raw) if raw.strip() else None

    # ---- server ------------------------------------------------------------
    def answers(self) -> bool:
        try:
            self.version()
            return True
        except (OSError, ToxiproxyError, ValueError):
            return False

    def version(self) -> str:
        req = urllib.request.Request(f"{self.api}/version")
        with urllib.request.urlopen(req, timeout=2) as resp:
            text = str(resp.read().decode()).strip()
        try:
            parsed = json.loads(text)
            return str(parsed.get("version", text)) if isinstance(parsed, dict) else str(parsed)
        except ValueError:
            return text

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._call("POST", "/reset")

    # ---- proxies -----------------------------------------------------------
    def proxies(self) -> dict[str, dict[str, Any]]:
        return dict(self._call("GET", "/proxies"))

    def proxy(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/proxies/{name}"))

    def create_proxy(self, name: str, upstream: str, listen: str = "127.0.0.1:0",
                     enabled: bool = True) -> dict[str, Any]:
        """Create a proxy; its `listen` in the answer is the bound address (port 0: free)."""
        return dict(self._call("POST", "/proxies", {"name": name, "listen": listen,
                                                    "upstream": upstream, "enabled": enabled}))

    def set_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        """Disable: close every connection and refuse new ones; enable: listen again."""
        return dict(self._call("POST", f"/proxies/{name}", {"enabled": enabled}))

    def delete_proxy(self, name: str) -> None:
        self._call("DELETE", f"/proxies/{name}")

    # ---- toxics ------------------------------------------------------------
    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/proxies/{proxy}/toxics"))

    def add_toxic(self, proxy: str, kind: str, attributes: dict[str, Any], *,
                  name: str | None = None, stream: str = "downstream",
                  toxicity: float = 1.0) -> str:
        """Add a toxic (`stream`: downstream = server → client, upstream = client → server);
        return its name."""
        name = name or f"{kind}_{stream}"
        self._call("POST", f"/proxies/{proxy}/toxics",
                   {"name": name, "type": kind, "stream": stream, "toxicity": toxicity,
                    "attributes": attributes})
        return name

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def clear_toxics(self, proxy: str) -> None:
        for toxic in self.toxics(proxy):
            self.remove_toxic(proxy, toxic["name"])

    # the toxics the chaos suite uses, by their attributes
    def latency(self, proxy: str, ms: int, jitter_ms: int = 0,
                stream: str = "downstream") -> str:
        return self.add_toxic(proxy, "latency", {"latency": ms, "jitter": jitter_ms},
                              stream=stream)

    def bandwidth(self, proxy: str, kb_per_s: int, stream: str = "downstream") -> str:
        return self.add_toxic(proxy, "bandwidth", {"rate": kb_per_s}, stream=stream)

    def timeout(self, proxy: str, ms: int = 0, stream: str = "downstream") -> str:
        """Drop the data; close after `ms` (0: hold the connection open until removed)."""
        return self.add_toxic(proxy, "timeout", {"timeout": ms}, stream=stream)

    def reset_peer(self, proxy: str, ms: int = 0, stream: str = "downstream") -> str:
        """Reset (TCP RST) each connection `ms` after its next data."""
        return self.add_toxic(proxy, "reset_peer", {"timeout": ms}, stream=stream)

    def slicer(self, proxy: str, average_size: int, size_variation: int = 0,
               delay_us: int = 0, stream: str = "downstream") -> str:
        return self.add_toxic(proxy, "slicer", {"average_size": average_size,
                                                "size_variation": size_variation,
                                                "delay": delay_us}, stream=stream)

    @contextmanager
    def toxic(self, proxy: str, kind: str, attributes: dict[str, Any], *,
              streams: tuple[str, ...] = ("downstream",)) -> Iterator[list[str]]:
        """A toxic on `streams` for the duration of the block."""
        names = [self.add_toxic(proxy, kind, attributes, name=f"{kind}_{s}", stream=s)
                 for s in streams]
        try:
            yield names
        finally:
            for n in names:
                self.remove_toxic(proxy, n)
