"""A real schema registry for the local stack: Apicurio Registry, Confluent API.

Apicurio Registry is a Quarkus application that Maven Central serves only as a library
jar (`io.apicurio:apicurio-registry-app`), so `docker/registry/pom.xml` builds it into a
runnable Quarkus application once per machine, cached next to the Kafka jars:

    mvn -B -s docker/registry/settings.xml -f docker/registry/pom.xml package \\
        -Drung.build.dir=~/.cache/rung/apicurio-registry-<version>.partial

(`registry_app()` does exactly that and renames the directory when the build is whole;
`make setup` calls it). `start_registry()` runs it on a free loopback port with in-memory
storage (an H2 database in the JVM: nothing is kept across restarts) and waits until the
Confluent-compatible API answers on `/apis/ccompat/v7/subjects`; `stop_registry()` stops
it by PID.

Why 2.4.2.Final and not 3.x: of the Apicurio versions whose app jar Maven Central serves,
3.3.3 is compiled for Java 21 and eight of its own modules (schema-util-provider,
config-index, utils-import-export, ...) are not on Central at 3.3.x, so it cannot be
resolved; 2.4.2.Final resolves whole except one Quarkus extension's build-time half
(handled in the pom) and runs on Java 17. Its `/apis/ccompat/v7` API is what rung's
client (confluent-kafka's `SchemaRegistryClient`) speaks. See docs/formats.md.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import structlog

from stream_app.devstack.pids import cache_dir, free_port, java, stop_pid

log = structlog.get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRY_POM = REPO_ROOT / "docker" / "registry" / "pom.xml"
REGISTRY_SETTINGS = REPO_ROOT / "docker" / "registry" / "settings.xml"
APICURIO_VERSION = "2.4.2.Final"
CCOMPAT_PATH = "/apis/ccompat/v7"
RUNNER_JAR = "rung-local-registry-1-runner.jar"
LOG_FILE = "registry.log"


class RegistryError(RuntimeError):
    """The registry could not be built, started or reached."""


def registry_app(version: str = APICURIO_VERSION) -> Path:
    """Return the directory of the runnable registry, building it with Maven once."""
    app = cache_dir() / f"apicurio-registry-{version}"
    marker = app / ".complete"
    if marker.exists() and (app / RUNNER_JAR).exists():
        return app
    if shutil.which("mvn") is None:
        raise RegistryError("Maven (mvn) is needed once to build the registry; "
                            "install it: apt-get install maven")
    tmp = app.with_name(app.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = ["mvn", "-q", "-B", "-s", str(REGISTRY_SETTINGS), "-f", str(REGISTRY_POM), "package",
           f"-Dapicurio.version={version}", f"-Drung.build.dir={tmp}"]
    log.info("registry_build", version=version, into=str(app))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (tmp / RUNNER_JAR).exists():
        raise RegistryError(f"building Apicurio Registry {version} with Maven failed:\n"
                            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    shutil.rmtree(app, ignore_errors=True)
    tmp.rename(app)
    marker.write_text(version)
    return app


@dataclass(frozen=True, slots=True)
class RunningRegistry:
    pid: int
    url: str  # the Confluent-compatible base URL, for `SchemaRegistryClient({"url": ...})`
    log_path: Path


def registry_answers(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def start_registry(run_dir: Path, *, port: int | None = None, heap_mb: int = 384,
                   timeout_s: float = 180.0) -> RunningRegistry:
    """Start the registry on a free loopback port; return once its Confluent API answers.

    A slow machine needs the generous timeout: the JVM starts Quarkus, H2 and the
    schema tables in about 10 s on a quiet core, several times that on a busy one."""
    app = registry_app()
    run_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    props = {
        "quarkus.http.host": "127.0.0.1",
        "quarkus.http.port": str(port),
        # in-memory storage (Apicurio's default in 2.x: H2 in the JVM), a small pool
        "quarkus.datasource.jdbc.url": "jdbc:h2:mem:registry_db",
        "quarkus.datasource.jdbc.initial-size": "2",
        "quarkus.datasource.jdbc.min-size": "2",
        "quarkus.datasource.jdbc.max-size": "16",
        "quarkus.http.access-log.enabled": "false",
        "quarkus.log.level": "WARN",
        "quarkus.log.category.\"io.apicurio\".level": "INFO",
        "registry.auth.enabled": "false",
    }
    jvm = [f"-Xmx{heap_mb}m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
           "-Djava.awt.headless=true", *(f"-D{k}={v}" for k, v in props.items())]
    log_path = run_dir / LOG_FILE
    with log_path.open("ab") as out:
        proc = subprocess.Popen([java(RegistryError, "the registry"), *jvm, "-jar", str(app / RUNNER_JAR)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=run_dir)
    url = f"http://127.0.0.1:{port}{CCOMPAT_PATH}"
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RegistryError(f"the registry exited with {proc.returncode}; see {log_path}")
        if registry_answers(url):
            log.info("registry_up", url=url, pid=proc.pid)
            return RunningRegistry(proc.pid, url, log_path)
        time.sleep(0.5)
    stop_registry(proc.pid)
    raise RegistryError(f"the registry did not answer on {url} in {timeout_s:.0f}s; "
                        f"see {log_path}")


def stop_registry(pid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM the registry's process group (SIGKILL after `timeout_s`), and reap it."""
    stop_pid(pid, timeout_s)
