"""rung's Redis client against a Redis that demands a password, with and without TLS.

Each fixture starts its own `redis-server` on a free loopback port with
`--requirepass` (the TLS one also with a CA and certificate made by openssl at
start) and stops it by PID. rung's `redis_client(settings)` must authenticate
with `RUNG_REDIS__PASSWORD` or a password in the URL, and a wrong or missing
password must end in a clear authentication error.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from stream_app.config import RedisSettings, Settings
from stream_app.devstack.pids import free_port
from stream_app.devstack.sasl import make_tls_files
from stream_app.wiring import redis_client

PASSWORD = "redis-pw-7c1e"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server not installed (make setup)")


@dataclass(frozen=True)
class RedisServer:
    port: int
    ca_file: str | None = None


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server") or "redis-server"
    return subprocess.Popen([exe, *args, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--requirepass", PASSWORD, "--logfile", str(log)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _wait(port: int, proc: subprocess.Popen[bytes], ca_file: str | None = None) -> None:
    """Wait with a plain redis-py client, so that a bug in rung's shows in the tests."""
    scheme = "rediss" if ca_file else "redis"
    end = time.monotonic() + 15.0
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        extra: dict[str, Any] = {"ssl_ca_certs": ca_file} if ca_file else {}
        client = redis.Redis.from_url(f"{scheme}://:{PASSWORD}@127.0.0.1:{port}/0",
                                      socket_timeout=2.0, **extra)
        try:
            if client.ping():
                return
        except redis.ConnectionError:
            time.sleep(0.1)
        finally:
            client.close()
    raise TimeoutError("redis-server did not answer")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5.0)


def _settings(port: int, scheme: str = "redis", **redis_kw: Any) -> Settings:
    url = redis_kw.pop("url", f"{scheme}://127.0.0.1:{port}/0")
    return Settings(redis=RedisSettings(url=url, socket_timeout_s=2.0, **redis_kw))


@pytest.fixture(scope="module")
def plain_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    port = free_port()
    run = Path(tmp_path_factory.mktemp("redis-auth"))
    proc = _start(["--port", str(port), "--dir", str(run)], run / "redis.log")
    try:
        _wait(port, proc)
        yield RedisServer(port)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    port = free_port()
    run = Path(tmp_path_factory.mktemp("redis-tls"))
    tls = make_tls_files(run / "tls")
    proc = _start(["--port", "0", "--tls-port", str(port), "--dir", str(run),
                   "--tls-cert-file", str(run / "tls" / "broker.pem"),
                   "--tls-key-file", str(run / "tls" / "broker.key"),
                   "--tls-ca-cert-file", str(tls.ca_pem), "--tls-auth-clients", "no"],
                  run / "redis.log")
    try:
        _wait(port, proc, str(tls.ca_pem))
        yield RedisServer(port, str(tls.ca_pem))
    finally:
        _stop(proc)


def _roundtrip(settings: Settings) -> bytes | None:
    client = redis_client(settings)
    assert client is not None
    try:
        client.set("rung:auth-test", b"ok", ex=60)
        value = client.get("rung:auth-test")
        return value if isinstance(value, bytes) else None
    finally:
        client.close()


def test_password_setting_authenticates(plain_redis: RedisServer) -> None:
    assert _roundtrip(_settings(plain_redis.port, password=PASSWORD)) == b"ok"


def test_password_in_url_authenticates(plain_redis: RedisServer) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{plain_redis.port}/0"
    assert _roundtrip(_settings(plain_redis.port, url=url)) == b"ok"


def test_wrong_password_is_an_authentication_error(plain_redis: RedisServer) -> None:
    with pytest.raises(redis.AuthenticationError):
        _roundtrip(_settings(plain_redis.port, password="not-it"))


def test_missing_password_is_an_authentication_error(plain_redis: RedisServer) -> None:
    with pytest.raises(redis.AuthenticationError):
        _roundtrip(_settings(plain_redis.port))


def test_tls_with_the_generated_ca(tls_redis: RedisServer) -> None:
    settings = _settings(tls_redis.port, password=PASSWORD, tls=True, tls_ca_file=tls_redis.ca_file)
    assert _roundtrip(settings) == b"ok"


def test_tls_without_the_ca_is_refused(tls_redis: RedisServer) -> None:
    # The server certificate is signed by the generated CA only: the system
    # trust store must not accept it.
    with pytest.raises(redis.ConnectionError):
        _roundtrip(_settings(tls_redis.port, password=PASSWORD, tls=True))


def test_plaintext_client_cannot_talk_to_the_tls_port(tls_redis: RedisServer) -> None:
    with pytest.raises(redis.ConnectionError):
        _roundtrip(_settings(tls_redis.port, password=PASSWORD))
