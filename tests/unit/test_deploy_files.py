"""Static checks of the Docker deployment files (no Docker engine needed).

`docker/Dockerfile` is linted for the rules that matter here (hadolint is not
available): multi-stage, pinned base image, non-root user, a HEALTHCHECK on
/healthz, no ADD of URLs, every COPY source present in the build context and
not excluded by .dockerignore. `docker/compose.yaml` is parsed and checked
for the services it promises, files it mounts, `RUNG_*` keys that rung's
Settings really has, and ports that agree across compose, the image,
Prometheus and Grafana.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import BaseModel

from stream_app.config import Settings

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
METRICS_PORT = 9464


# ---- Dockerfile ------------------------------------------------------------------
def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        full = (buf + line).strip()
        buf = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _stages(instr: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in instr:
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _global_args(instr: list[tuple[str, str]]) -> dict[str, str]:
    args: dict[str, str] = {}
    for word, rest in instr:
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    return args


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in stage:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def _copy_sources(rest: str) -> tuple[list[str], bool]:
    parts = shlex.split(rest)
    from_stage = any(p.startswith("--from=") for p in parts)
    files = [p for p in parts if not p.startswith("--")]
    return files[:-1], from_stage


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


def test_dockerfile_is_multi_stage_and_pinned(dockerfile: list[tuple[str, str]]) -> None:
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "build and runtime stages expected"
    args = _global_args(dockerfile)
    names = []
    for stage in stages:
        image, _, alias = stage[0][1].partition(" AS ")
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.strip())
        name, _, tag = image.rpartition(":")
        assert "@sha256:" in image or (name and re.search(r"\d+\.\d+", tag)), image
        assert tag != "latest"
        names.append(alias.strip())
    final = stages[-1]
    copies_from = [rest for word, rest in final if word == "COPY" and "--from=" in rest]
    assert any(f"--from={names[0]}" in c for c in copies_from), "runtime copies from build"


def test_dockerfile_runs_as_non_root(dockerfile: list[tuple[str, str]]) -> None:
    final = _stages(dockerfile)[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert not user.isdigit() or int(user) >= 1000
    # USER comes after every RUN of the runtime stage (nothing runs as root later)...
    last_user = max(i for i, (w, _) in enumerate(final) if w == "USER")
    assert all(i < last_user for i, (w, _) in enumerate(final) if w == "RUN")


def test_dockerfile_healthcheck_and_metrics_binding(dockerfile: list[tuple[str, str]]) -> None:
    final = _stages(dockerfile)[-1]
    checks = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert len(checks) == 1 and "/healthz" in checks[0]
    env = _env(final)
    assert env["RUNG_METRICS__HOST"] == "0.0.0.0"
    assert int(env["RUNG_METRICS__PORT"]) == METRICS_PORT
    assert f"'{METRICS_PORT}'" in checks[0]  # the check's fallback port
    exposed = [rest for word, rest in final if word == "EXPOSE"]
    assert exposed == [str(METRICS_PORT)]
    assert _unknown_rung_keys(env) == []


def test_dockerfile_has_cpu_and_cuda_variants(dockerfile: list[tuple[str, str]]) -> None:
    build = _stages(dockerfile)[0]
    args = {rest.partition("=")[0]: rest.partition("=")[2] for w, rest in build if w == "ARG"}
    assert args["VARIANT"] == "cpu"
    assert args["CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert args["CUDA_INDEX"].startswith("https://download.pytorch.org/whl/cu")
    runs = " ".join(rest for w, rest in build if w == "RUN")
    assert "cpu)" in runs and "cuda)" in runs and "torch==" in runs


def test_dockerfile_adds_no_urls_and_copies_what_exists(dockerfile: list[tuple[str, str]]) -> None:
    assert not [rest for word, rest in dockerfile if word == "ADD" and "://" in rest]
    ignore = (REPO / ".dockerignore").read_text().split()
    for word, rest in dockerfile:
        if word not in ("COPY", "ADD"):
            continue
        sources, from_stage = _copy_sources(rest)
        if from_stage:
            continue
        matched_any = False
        for src in sources:
            if any(ch in src for ch in "*?["):
                matched_any |= bool(list(REPO.glob(src)))
                continue
            assert (REPO / src).exists(), f"COPY source missing from the build context: {src}"
            assert f"!{src}" in ignore or f"!{src}/" in ignore, f".dockerignore drops {src}"
            matched_any = True
        assert matched_any, rest


# ---- compose ---------------------------------------------------------------------
_VAR = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose-style ${VAR:-default} / ${VAR:?message}: defaults, or a placeholder."""
    def sub(m: re.Match[str]) -> str:
        return m.group(2) if m.group(0).find(":-") > 0 else f"set-{m.group(1).lower()}"
    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    service = compose["services"][name]
    assert isinstance(service, dict)
    return service


def _section_fields() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, info in Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        out[name] = set(model.model_fields)
    return out


def _unknown_rung_keys(env: dict[str, Any]) -> list[str]:
    fields = _section_fields()
    unknown = []
    for key in env:
        if not key.startswith("RUNG_"):
            continue
        section, sep, field = key[len("RUNG_"):].lower().partition("__")
        if not sep or field not in fields.get(section, set()):
            unknown.append(key)
    return unknown


def _rung_services(compose: dict[str, Any]) -> list[str]:
    return [n for n, s in compose["services"].items()
            if str(s.get("image", "")).startswith("rung:")]


def test_compose_has_the_promised_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "redis", "rung-worker", "prometheus", "grafana"} <= set(services)
    assert _service(compose, "kafka")["image"].startswith("apache/kafka:")
    assert "replicas" in _service(compose, "rung-worker")["deploy"]
    for name in services:
        image = str(services[name].get("image", ""))
        assert not image.endswith(":latest") and ":" in image, f"{name}: pin the image"


def test_kafka_runs_in_kraft_mode(compose: dict[str, Any]) -> None:
    env = _service(compose, "kafka")["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert not [k for k in env if "ZOOKEEPER" in k]
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16  # a Kafka Uuid
    listeners = env["KAFKA_LISTENERS"]
    voter_port = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].rsplit(":", 1)[1]
    assert f"CONTROLLER://:{voter_port}" in listeners


def test_referenced_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source} missing"
        build = service.get("build")
        if isinstance(build, dict):
            context = DOCKER / build["context"]
            assert (context / build["dockerfile"]).is_file()
            assert context.resolve() == REPO
    prometheus_yml = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    mounted = {Path(v.split(":")[1]).name for v in _service(compose, "prometheus")["volumes"]}
    for rule_file in prometheus_yml["rule_files"]:
        assert Path(rule_file).name in mounted, f"rule file {rule_file} is not mounted"


def test_grafana_provisioning_matches_mounts(compose: dict[str, Any]) -> None:
    mounts = dict(v.split(":")[:2] for v in _service(compose, "grafana")["volumes"]
                  if v.startswith("."))
    providers = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "dashboards" / "rung.yml").read_text())
    dashboard_path = providers["providers"][0]["options"]["path"]
    assert mounts["./grafana/dashboards"] == dashboard_path
    assert list((DOCKER / "grafana" / "dashboards").glob("*.json"))
    assert mounts["./grafana/provisioning/datasources"].startswith("/etc/grafana/provisioning")
    datasources = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    url = urlsplit(datasources["datasources"][0]["url"])
    assert url.hostname in compose["services"] and url.port == 9090  # Prometheus' port


def test_every_rung_key_is_a_setting(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    for name in _rung_services(compose):
        env = _service(compose, name)["environment"]
        assert _unknown_rung_keys(env) == [], name
        for key in list(os.environ):
            if key.startswith("RUNG_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, _interpolate(str(value)))
        settings = Settings()  # validates every value too
        assert settings.metrics.host == "0.0.0.0"
        assert settings.admin.faults_enabled is False


def test_ports_agree(compose: dict[str, Any]) -> None:
    worker = _service(compose, "rung-worker")
    env = {k: _interpolate(str(v)) for k, v in worker["environment"].items()}
    kafka_env = _service(compose, "kafka")["environment"]
    bootstrap = env["RUNG_KAFKA__BOOTSTRAP_SERVERS"]
    assert f"PLAINTEXT://{bootstrap}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"PLAINTEXT://:{bootstrap.rsplit(':', 1)[1]}" in kafka_env["KAFKA_LISTENERS"]
    redis_url = urlsplit(env["RUNG_REDIS__URL"])
    redis_cmd = _service(compose, "redis")["command"]
    assert redis_url.hostname == "redis"
    assert str(redis_url.port) == redis_cmd[redis_cmd.index("--port") + 1]
    assert int(env["RUNG_METRICS__PORT"]) == METRICS_PORT
    assert [str(p) for p in worker["expose"]] == [str(METRICS_PORT)]
    scrape = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    ports = set()
    for job in scrape["scrape_configs"]:
        for static in job.get("static_configs", []):
            ports |= {int(t.rsplit(":", 1)[1]) for t in static["targets"]}
        for dns in job.get("dns_sd_configs", []):
            ports.add(int(dns["port"]))
    assert ports == {METRICS_PORT}


def test_secrets_are_required_variables_and_ports_stay_local(compose: dict[str, Any]) -> None:
    secrets = {"RUNG_REDIS__PASSWORD", "REDIS_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD"}
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        for key in secrets & set(env):
            assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(env[key])), f"{name}.{key} hard-coded"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


def test_replicated_workers_do_not_share_an_instance_id(compose: dict[str, Any]) -> None:
    """`--scale rung-worker=N` copies one environment into N containers: a fixed instance
    or transactional id there would make the replicas fence each other in turn. Left
    unset, each gets `<container id>-<pid>` (stream_app.config.default_instance_id)."""
    worker = _service(compose, "rung-worker")
    env = worker.get("environment", {})
    for key in ("RUNG_KAFKA__INSTANCE_ID", "RUNG_KAFKA__TRANSACTIONAL_ID",
                "RUNG_KAFKA__INSTANCE_SLOT", "POD_NAME"):
        assert key not in env, f"rung-worker sets {key}: shared by every replica"


def test_image_port_matches_the_kubernetes_manifests(dockerfile: list[tuple[str, str]]) -> None:
    sts = [d for d in yaml.safe_load_all((DOCKER / "k8s" / "rendered" / "10-worker.yaml").read_text())
           if d and d["kind"] == "StatefulSet"]
    assert len(sts) == 1
    container = sts[0]["spec"]["template"]["spec"]["containers"][0]
    assert [p["containerPort"] for p in container["ports"]] == [METRICS_PORT]
    final = _stages(dockerfile)[-1]
    assert int(_env(final)["RUNG_METRICS__PORT"]) == METRICS_PORT
    user = [rest for word, rest in final if word == "USER"][-1].split(":")[0]
    assert sts[0]["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user)
