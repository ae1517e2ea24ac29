"""The local dev stack: a real single-node Kafka (KRaft) broker and a real Redis.

No Docker. Kafka is resolved from Maven Central with `docker/kafka/pom.xml`
and cached under `~/.cache/rung/kafka-<version>/` once per machine; Redis is
Debian's `redis-server` from the PATH. Both run on free loopback ports, with
their data and logs in the stack's run directory, and are recorded by PID in
`stack.json` there so that `down` stops exactly what `up` started.

When `KAFKA_BOOTSTRAP_SERVERS` / `REDIS_URL` are set, those services are used
and nothing is started for them (except that a stack asked for `security=`
always starts its own broker: only that one has the SASL listener).

`LocalStack(run_dir, security="sasl_plaintext" | "sasl_ssl", users={...})`
adds a client-facing SASL listener (SCRAM-SHA-512 by default, or PLAIN), with
TLS and a CA generated at start for `sasl_ssl` (see `stream_app.devstack.sasl`).
`StackState` records its address, mechanism, users and CA path;
`StackState.kafka_settings()` turns them into rung's `kafka` settings.

`LocalStack(run_dir, faults=True)` (`rung stack up --faults`) also starts Toxiproxy
(`stream_app.devstack.toxiproxy`) with a proxy in front of Redis (`redis`) and one in
front of a broker listener (`kafka`) whose advertised address is the proxy's, so that
every client connection, bootstrap and after, goes through it. Clients get the proxies'
addresses (`bootstrap_servers`, `redis_url`); the direct ones are kept as
`direct_bootstrap_servers` / `direct_redis_url` (for producers and read-back that must
not see the faults). Such a stack always starts its own broker and Redis.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from stream_app.devstack.kafka_files import log4j2_properties, server_properties
from stream_app.devstack.pids import alive, cache_dir, free_port, java, stop_pid
from stream_app.devstack.registry import start_registry
from stream_app.devstack.sasl import (
    ListenerAuth,
    TlsFiles,
    broker_properties,
    listener_auth,
    make_tls_files,
    scram_format_args,
)
from stream_app.devstack.toxiproxy import ToxiproxyClient, start_toxiproxy

log = structlog.get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_POM = REPO_ROOT / "docker" / "kafka" / "pom.xml"
KAFKA_VERSION = "4.1.1"
CACHE_DIR = cache_dir()
DEFAULT_RUN_DIR = Path(os.environ.get("RUNG_STACK_DIR", REPO_ROOT / ".run" / "stack"))
STATE_FILE = "stack.json"
KAFKA_PROXY = "kafka"  # Toxiproxy proxy names of a `faults=True` stack
REDIS_PROXY = "redis"


class StackError(RuntimeError):
    """The local stack could not be started or reached."""


def kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """Return the directory of Kafka's jars, fetching them with Maven once."""
    libs = CACHE_DIR / f"kafka-{version}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise StackError("Maven (mvn) is needed once to fetch Kafka; install it: apt-get install maven")
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        "mvn", "-q", "-B", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
        f"-Dkafka.version={version}", f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
    ]
    log.info("kafka_fetch", version=version, into=str(libs))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
        raise StackError(f"fetching Kafka {version} with Maven failed:\n{proc.stdout}\n{proc.stderr}")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.write_text(version)
    return libs


@dataclass
class StackState:
    run_dir: str
    bootstrap_servers: str
    redis_url: str
    kafka_pid: int | None = None
    redis_pid: int | None = None
    kafka_ports: list[int] = field(default_factory=list)
    redis_port: int | None = None
    started_at_s: float = 0.0
    # The SASL client listener, when the stack was started with `security=`.
    sasl_bootstrap_servers: str | None = None
    security_protocol: str = "PLAINTEXT"  # of sasl_bootstrap_servers
    sasl_mechanism: str | None = None
    sasl_users: dict[str, str] = field(default_factory=dict)
    ssl_ca_location: str | None = None
    # Toxiproxy, when the stack was started with `faults=True`: then `bootstrap_servers`
    # and `redis_url` are the proxies' addresses and these are the services' own.
    toxiproxy_pid: int | None = None
    toxiproxy_api: str | None = None
    proxies: dict[str, str] = field(default_factory=dict)  # name -> listen address
    direct_bootstrap_servers: str | None = None
    direct_redis_url: str | None = None
    registry_pid: int | None = None  # the schema registry, with `registry=True` (--registry)
    registry_url: str | None = None  # its Confluent-compatible API

    @property
    def direct_bootstrap(self) -> str:
        """The broker's own PLAINTEXT address (never through a proxy)."""
        return self.direct_bootstrap_servers or self.bootstrap_servers

    @property
    def direct_redis(self) -> str:
        return self.direct_redis_url or self.redis_url

    def kafka_settings(self, user: str | None = None,
                       password: str | None = None) -> dict[str, Any]:
        """rung `kafka` settings (KafkaSettings fields) for the SASL listener.

        `user` defaults to the first recorded user, `password` to the recorded
        one (pass another to try a wrong password).
        """
        if self.sasl_bootstrap_servers is None:
            raise StackError("this stack has no SASL listener (start it with security=...)")
        name = user or sorted(self.sasl_users)[0]
        secret = password if password is not None else self.sasl_users[name]
        return {"bootstrap_servers": self.sasl_bootstrap_servers,
                "security_protocol": self.security_protocol,
                "sasl_mechanism": self.sasl_mechanism, "sasl_username": name,
                "sasl_password": secret, "ssl_ca_location": self.ssl_ca_location}

    def client_config(self, user: str | None = None,
                      password: str | None = None) -> dict[str, Any]:
        """librdkafka settings for the SASL listener (for admin clients and tests)."""
        k = self.kafka_settings(user, password)
        conf = {"bootstrap.servers": k["bootstrap_servers"],
                "security.protocol": k["security_protocol"],
                "sasl.mechanism": k["sasl_mechanism"],
                "sasl.username": k["sasl_username"], "sasl.password": k["sasl_password"]}
        if k["ssl_ca_location"]:
            conf["ssl.ca.location"] = k["ssl_ca_location"]
        return conf


class LocalStack:
    """Start, stop and inspect the local Kafka + Redis stack.

    Used by `rung stack up|down|status`, by the integration tests (one stack per
    test run, in a temp dir) and by the benchmarks.
    """

    def __init__(self, run_dir: Path | None = None, kafka_heap_mb: int = 768, *,
                 security: str | None = None, sasl_mechanism: str = "SCRAM-SHA-512",
                 users: Mapping[str, str] | None = None, faults: bool = False,
                 registry: bool = False) -> None:
        """`security`: None (PLAINTEXT only), "sasl_plaintext" or "sasl_ssl";
        `users`: name → password for the SASL listener (default: one `rung`
        user with a random password, recorded in the state); `faults`: route
        clients through Toxiproxy (see the module's docstring)."""
        self.faults = faults
        self.registry = registry  # also start a schema registry (stream_app.devstack.registry)
        self.run_dir = Path(run_dir) if run_dir else DEFAULT_RUN_DIR
        self.kafka_heap_mb = kafka_heap_mb
        self.auth: ListenerAuth | None = (
            listener_auth(security, sasl_mechanism, users) if security is not None else None)

    # ---- state -------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def state(self) -> StackState | None:
        try:
            return StackState(**json.loads(self.state_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _save(self, state: StackState) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # The state may hold SASL passwords: readable by its owner only.
        fd = os.open(self.state_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(asdict(state), indent=2))

    # ---- up ----------------------------------------------------------------
    def up(self, timeout_s: float = 90.0) -> StackState:
        current = self.state()
        if current is not None and self._healthy(current):
            return current
        if current is not None:
            self.down()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = StackState(run_dir=str(self.run_dir), bootstrap_servers="", redis_url="",
                           started_at_s=time.time())
        try:
            own = self.faults  # a faults stack proxies services it started itself
            external_kafka = (None if self.auth or own
                              else os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
            external_redis = None if own else os.environ.get("REDIS_URL")
            if self.faults:
                self._start_toxiproxy(state)
            if external_redis:
                state.redis_url = external_redis
            else:
                self._start_redis(state)
            self._save(state)
            if external_kafka:
                state.bootstrap_servers = external_kafka
            else:
                self._start_kafka(state)
            self._save(state)
            wait_for_kafka(state.direct_bootstrap, timeout_s)
            if state.direct_bootstrap_servers is not None:
                wait_for_kafka(state.bootstrap_servers, timeout_s)
            if state.sasl_bootstrap_servers is not None:
                wait_for_kafka(state.sasl_bootstrap_servers, timeout_s, state.client_config())
            wait_for_redis(state.redis_url, timeout_s=10.0)
            if state.direct_redis_url is not None:
                wait_for_redis(state.direct_redis_url, timeout_s=10.0)
            if self.registry:
                running = start_registry(self.run_dir)
                state.registry_pid, state.registry_url = running.pid, running.url
                self._save(state)
        except BaseException:
            self.down()
            raise
        log.info("stack_up", bootstrap_servers=state.bootstrap_servers, redis_url=state.redis_url,
                 sasl_bootstrap_servers=state.sasl_bootstrap_servers,
                 security_protocol=state.security_protocol, toxiproxy=state.toxiproxy_api)
        return state

    def _start_toxiproxy(self, state: StackState) -> None:
        state.toxiproxy_pid, state.toxiproxy_api = start_toxiproxy(self.run_dir)
        self._save(state)

    def toxiproxy(self) -> ToxiproxyClient:
        """The client of this stack's Toxiproxy (a `faults=True` stack only)."""
        state = self.state()
        if state is None or not state.toxiproxy_api:
            raise StackError("this stack has no Toxiproxy (start it with faults=True / --faults)")
        return ToxiproxyClient(state.toxiproxy_api)

    def _proxy(self, state: StackState, name: str, upstream: str) -> str:
        """Create proxy `name` → `upstream` on a free port; return its listen address."""
        assert state.toxiproxy_api is not None
        listen = str(ToxiproxyClient(state.toxiproxy_api).create_proxy(name, upstream)["listen"])
        state.proxies[name] = listen
        return listen

    def _start_redis(self, state: StackState) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise StackError("redis-server not found: run `make setup` (installs Debian's redis-server)")
        port = free_port()
        cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.run_dir), "--logfile", str(self.run_dir / "redis.log"),
               "--daemonize", "no", "--protected-mode", "yes"]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        state.redis_pid, state.redis_port = proc.pid, port
        state.redis_url = f"redis://127.0.0.1:{port}/0"
        if state.toxiproxy_api:
            state.direct_redis_url = state.redis_url
            listen = self._proxy(state, REDIS_PROXY, f"127.0.0.1:{port}")
            state.redis_url = f"redis://{listen}/0"

    def _start_kafka(self, state: StackState) -> None:
        libs = kafka_libs()
        broker_port, controller_port = free_port(), free_port()
        data_dir = self.run_dir / "kafka-data"
        shutil.rmtree(data_dir, ignore_errors=True)
        props = self.run_dir / "server.properties"
        client = self._client_listener(state)
        proxied: tuple[int, str] | None = None
        if state.toxiproxy_api:
            # the broker binds `bind` and advertises the proxy in front of it
            bind = free_port()
            proxied = (bind, self._proxy(state, KAFKA_PROXY, f"127.0.0.1:{bind}"))
        props.write_text(server_properties(data_dir, broker_port, controller_port, client,
                                           proxied))
        if client is not None:
            props.chmod(0o600)  # PLAIN passwords are in its JAAS line
        log4j = self.run_dir / "log4j2.properties"
        log4j.write_text(log4j2_properties(self.run_dir / "kafka.log"))
        classpath = f"{libs}/*"
        common = [java(StackError, "the Kafka broker"), f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath]
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run(
            [*common, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
             "-c", str(props),
             *(scram_format_args(self.auth) if self.auth else [])],
            capture_output=True, text=True)
        if fmt.returncode != 0:
            raise StackError(f"kafka storage format failed: {fmt.stdout}{fmt.stderr}")
        state.kafka_pid = self._launch_kafka(common[0], common[1:], props)
        state.kafka_ports = [broker_port, controller_port]
        state.bootstrap_servers = f"127.0.0.1:{broker_port}"
        if client is not None:
            state.kafka_ports.append(client[0])
        if proxied is not None:
            state.kafka_ports.append(proxied[0])
            state.direct_bootstrap_servers = state.bootstrap_servers
            state.bootstrap_servers = proxied[1]

    def _launch_kafka(self, java: str, jvm_args: list[str], props: Path) -> int:
        """Start the broker process on formatted storage; return its pid."""
        heap = [f"-Xmx{self.kafka_heap_mb}m", f"-Xms{min(256, self.kafka_heap_mb)}m",
                "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"]
        with (self.run_dir / "kafka.stdout").open("ab") as out:
            proc = subprocess.Popen([java, *heap, *jvm_args, "kafka.Kafka", str(props)],
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=self.run_dir)
        return proc.pid

    def restart_kafka(self, timeout_s: float = 90.0) -> None:
        """Stop the broker gracefully and start it again on the same ports and data:
        committed data, offsets and transactions survive, as on a real restart."""
        state = self.state()
        if state is None or not state.kafka_pid:
            raise StackError("no local broker to restart")
        stop_pid(state.kafka_pid, 30.0)
        log4j = self.run_dir / "log4j2.properties"
        jvm_args = [f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{kafka_libs()}/*"]
        state.kafka_pid = self._launch_kafka(java(StackError, "the Kafka broker"), jvm_args, self.run_dir / "server.properties")
        self._save(state)
        wait_for_kafka(state.direct_bootstrap, timeout_s)

    def _client_listener(self, state: StackState) -> tuple[int, str, list[str]] | None:
        """Prepare the SASL listener (TLS files, users) and record it in `state`."""
        auth = self.auth
        if auth is None:
            return None
        tls: TlsFiles | None = make_tls_files(self.run_dir / "tls") if auth.tls else None
        port = free_port()
        state.sasl_bootstrap_servers = f"127.0.0.1:{port}"
        state.security_protocol = auth.security_protocol
        state.sasl_mechanism = auth.mechanism
        state.sasl_users = dict(auth.users)
        state.ssl_ca_location = str(tls.ca_pem) if tls else None
        return port, auth.security_protocol, broker_properties(auth, tls)

    # ---- down / status -----------------------------------------------------
    def down(self, timeout_s: float = 20.0) -> bool:
        """Stop what `up` started (by PID) and remove the run directory."""
        state = self.state()
        if state is not None:
            for pid in (state.kafka_pid, state.redis_pid, state.toxiproxy_pid, state.registry_pid):
                if pid:
                    stop_pid(pid, timeout_s)
        existed = self.run_dir.exists()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if state is not None:
            log.info("stack_down", run_dir=str(self.run_dir))
        return existed

    def status(self) -> dict[str, object]:
        state = self.state()
        if state is None:
            return {"running": False}
        kafka_ok = _kafka_answers(state.direct_bootstrap, 3.0)
        redis_ok = _redis_answers(state.direct_redis)
        return {
            "running": kafka_ok and redis_ok,
            "bootstrap_servers": state.bootstrap_servers,
            "redis_url": state.redis_url,
            "sasl_bootstrap_servers": state.sasl_bootstrap_servers,
            "security_protocol": state.security_protocol,
            "ssl_ca_location": state.ssl_ca_location,
            "kafka": {"pid": state.kafka_pid, "alive": bool(state.kafka_pid and alive(state.kafka_pid)),
                      "answers": kafka_ok},
            "redis": {"pid": state.redis_pid, "alive": bool(state.redis_pid and alive(state.redis_pid)),
                      "answers": redis_ok},
            "run_dir": state.run_dir,
            **({"toxiproxy": {"pid": state.toxiproxy_pid, "api": state.toxiproxy_api,
                              "alive": bool(state.toxiproxy_pid and alive(state.toxiproxy_pid)),
                              "proxies": state.proxies,
                              "direct_bootstrap_servers": state.direct_bootstrap_servers,
                              "direct_redis_url": state.direct_redis_url}}
               if state.toxiproxy_api else {}),
        }

    def _healthy(self, state: StackState) -> bool:
        ok = (_kafka_answers(state.direct_bootstrap, 3.0)
              and _redis_answers(state.direct_redis))
        if self.faults != bool(state.toxiproxy_api):
            return False  # asked for (no) proxies: start a stack that matches
        if state.toxiproxy_pid and not alive(state.toxiproxy_pid):
            return False
        return ok

    # ---- fault helpers for tests -------------------------------------------
    def signal_kafka(self, sig: signal.Signals) -> None:
        state = self.state()
        if state is None or not state.kafka_pid:
            raise StackError("no local broker to signal")
        os.kill(state.kafka_pid, sig)

    def stop_redis(self) -> None:
        state = self.state()
        if state and state.redis_pid:
            stop_pid(state.redis_pid, 10.0)

    def start_redis(self) -> None:
        """Restart Redis on the same port after `stop_redis` (data is not kept)."""
        state = self.state()
        if state is None or state.redis_port is None:
            raise StackError("no local Redis recorded")
        exe = shutil.which("redis-server") or "redis-server"
        proc = subprocess.Popen(
            [exe, "--port", str(state.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.run_dir),
             "--logfile", str(self.run_dir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        state.redis_pid = proc.pid
        self._save(state)
        wait_for_redis(state.direct_redis, timeout_s=10.0)


def _kafka_answers(bootstrap: str, timeout_s: float,
                   config: Mapping[str, Any] | None = None) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient({**(config or {}), "bootstrap.servers": bootstrap,
                             "socket.timeout.ms": 2000, "log_level": 0})
        md = admin.list_topics(timeout=timeout_s)
        return len(md.brokers) > 0
    except Exception:  # noqa: BLE001 - any failure means "does not answer"
        return False


def _redis_answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001
        return False


def wait_for_kafka(bootstrap: str, timeout_s: float,
                   config: Mapping[str, Any] | None = None) -> None:
    """Wait until the broker answers metadata requests (`config`: e.g. SASL keys)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if _kafka_answers(bootstrap, 2.0, config):
            return
        time.sleep(0.3)
    raise StackError(f"Kafka at {bootstrap} did not answer metadata requests in {timeout_s:.0f}s")


def wait_for_redis(url: str, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if _redis_answers(url):
            return
        time.sleep(0.1)
    raise StackError(f"Redis at {url} did not answer in {timeout_s:.0f}s")
