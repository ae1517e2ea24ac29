"""Offline checks of rung's Kubernetes manifests (`docker/k8s/`), no cluster needed.

- The committed `docker/k8s/rendered/*.yaml` equal a fresh render of
  `docker/k8s/values.yaml` through `docker/k8s/templates/`.
- Every built-in object is validated strictly by the official `kubernetes` client's
  model classes (pydantic, `extra="forbid"`): unknown fields, wrong types and
  missing required fields fail. KEDA's ScaledObject and TriggerAuthentication,
  which that client does not know, against a small hand-written schema.
- Cross-references: selectors select the pods they mean (and only those), the PDB
  covers the StatefulSet's pods, probes and Services hit the container's port,
  `maxReplicaCount <= partitions`, the scaler watches the group and topic the
  workers use, every `RUNG_*` name is a real setting and the whole environment
  validates as `stream_app.config.Settings`, and the pod name becomes the
  instance id (hence a stable transactional id).
- The instance id's resolution order (`stream_app.config.default_instance_id`).
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from stream_app.config import KafkaSettings, Settings, default_instance_id, load_settings

yaml = pytest.importorskip("yaml")
k8s = pytest.importorskip("kubernetes.client")
if not hasattr(k8s.V1Pod, "model_validate"):  # before 37 the models were not pydantic
    pytest.skip("needs kubernetes>=37 (the dev extra)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "docker" / "k8s"
BENCH_RESULTS = REPO / "docs" / "results"
Doc = dict[str, Any]


def _load_renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rung_k8s_render", K8S / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


render = _load_renderer()


def _values() -> dict[str, Any]:
    return yaml.safe_load((K8S / "values.yaml").read_text())


def _plaintext_values() -> dict[str, Any]:
    """A second variant: no SASL, no TLS, no Redis password, no monitor."""
    v = copy.deepcopy(_values())
    v["kafka"]["securityProtocol"] = "PLAINTEXT"
    v["kafka"]["sasl"]["enabled"] = False
    v["redis"]["passwordSecret"]["enabled"] = False
    v["monitor"]["enabled"] = False
    v["topics"]["partitions"] = 3
    v["scaling"].update(minReplicas=1, maxReplicas=3)
    return v


def _render_values(values: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return render.render(path)


def _docs(rendered: dict[str, str]) -> list[Doc]:
    return [d for text in rendered.values() for d in yaml.safe_load_all(text) if d]


VARIANTS = {"committed": _values, "plaintext": _plaintext_values}


@pytest.fixture(params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[dict[str, Any], list[Doc]]:
    values = VARIANTS[request.param]()
    return render.derive(values), _docs(_render_values(values, tmp_path))


def _one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# ---- one source ------------------------------------------------------------------------
def test_rendered_files_equal_a_fresh_render() -> None:
    fresh = render.render()
    assert render.stale_files(fresh) == [], (
        "docker/k8s/rendered/ is stale: run `.venv/bin/python docker/k8s/render.py`")
    assert render.main(["--check"]) == 0


def test_renderer_refuses_more_workers_than_partitions(tmp_path: Path) -> None:
    v = _values()
    v["scaling"]["maxReplicas"] = v["topics"]["partitions"] + 1
    with pytest.raises(render.RenderError, match="exceeds topics.partitions"):
        _render_values(v, tmp_path)
    v = _values()
    v["scaling"]["minReplicas"] = v["scaling"]["maxReplicas"] + 1
    with pytest.raises(render.RenderError):
        _render_values(v, tmp_path)
    v = _values()
    v["extraSettings"]["RUNG_KAFKA__GROUP_ID"] = "other"
    with pytest.raises(render.RenderError, match="structured values"):
        _render_values(v, tmp_path)


def test_unknown_placeholder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x.yaml").write_text('kind: ConfigMap\nname: "{{ no.such.value }}"\n')
    with pytest.raises(render.RenderError, match="no value"):
        render.render(K8S / "values.yaml", tmp_path / "t")


# ---- built-in kinds: the kubernetes client's models, strictly -------------------------
BUILTIN = {("v1", "ConfigMap"), ("v1", "Service"), ("v1", "ServiceAccount"),
           ("apps/v1", "StatefulSet"), ("apps/v1", "Deployment"),
           ("policy/v1", "PodDisruptionBudget")}
KEDA = {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")}


def _model(doc: Doc) -> type:
    version = doc["apiVersion"].rpartition("/")[2]
    return getattr(k8s, f"{version.capitalize()}{doc['kind']}")


def test_every_document_is_a_known_kind(variant: tuple[dict[str, Any], list[Doc]]) -> None:
    _, docs = variant
    for doc in docs:
        assert (doc.get("apiVersion"), doc.get("kind")) in BUILTIN | KEDA, doc.get("kind")
        assert doc["metadata"]["name"]


def test_builtin_kinds_validate_strictly(variant: tuple[dict[str, Any], list[Doc]]) -> None:
    _, docs = variant
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in BUILTIN:
            _model(doc).model_validate(doc, strict=True)
            checked += 1
    assert checked >= 4


def test_the_strict_validation_really_rejects() -> None:
    """The validator used above is not a rubber stamp."""
    sts = copy.deepcopy(_one(_docs(render.render()), "StatefulSet"))
    bad_field = copy.deepcopy(sts)
    bad_field["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    bad_type = copy.deepcopy(sts)
    bad_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9464"
    missing = copy.deepcopy(sts)
    del missing["spec"]["template"]["spec"]["containers"][0]["name"]
    for doc in (bad_field, bad_type, missing):
        with pytest.raises(Exception, match="validation error"):
            k8s.V1StatefulSet.model_validate(doc, strict=True)


# ---- KEDA: a hand-written schema ----------------------------------------------------------
# (type, required); a dict is a nested object, ("list", x) a list, ("map", t) string keys.
S, N, B = "str", "int", "bool"
_META = {"name": (S, True), "namespace": (S, False), "labels": (("map", S), False),
         "annotations": (("map", S), False)}
KAFKA_TRIGGER_KEYS = {"bootstrapServers", "consumerGroup", "topic", "lagThreshold",
                      "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers",
                      "excludePersistentLag", "scaleToZeroOnInvalidOffset",
                      "limitToPartitionsWithLag", "version", "partitionLimitation", "sasl",
                      "tls", "unsafeSsl"}
KEDA_AUTH_PARAMETERS = {"sasl", "username", "password", "tls", "ca", "cert", "key",
                        "keyPassword", "oauthTokenEndpointUri", "scopes"}
SCALED_OBJECT = {
    "apiVersion": (S, True), "kind": (S, True), "metadata": (_META, True),
    "spec": ({
        "scaleTargetRef": ({"name": (S, True), "apiVersion": (S, False), "kind": (S, False),
                            "envSourceContainerName": (S, False)}, True),
        "pollingInterval": (N, False), "cooldownPeriod": (N, False),
        "initialCooldownPeriod": (N, False), "idleReplicaCount": (N, False),
        "minReplicaCount": (N, False), "maxReplicaCount": (N, False),
        "fallback": ({"failureThreshold": (N, True), "replicas": (N, True)}, False),
        "advanced": ({
            "restoreToOriginalReplicaCount": (B, False),
            "horizontalPodAutoscalerConfig": ({
                "name": (S, False),
                "behavior": ("k8s:V2HorizontalPodAutoscalerBehavior", False)}, False)}, False),
        "triggers": (("list", {
            "type": (S, True), "name": (S, False), "useCachedMetrics": (B, False),
            "metricType": (S, False), "metadata": (("map", S), True),
            "authenticationRef": ({"name": (S, True), "kind": (S, False)}, False)}), True),
    }, True),
}
TRIGGER_AUTHENTICATION = {
    "apiVersion": (S, True), "kind": (S, True), "metadata": (_META, True),
    "spec": ({"secretTargetRef": (("list", {"parameter": (S, True), "name": (S, True),
                                            "key": (S, True)}), False),
              "env": (("list", {"parameter": (S, True), "name": (S, True),
                                "containerName": (S, False)}), False)}, True),
}


def _check(value: Any, schema: Any, where: str) -> list[str]:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{where}: expected an object"]
        errors = [f"{where}.{k}: unknown field" for k in value if k not in schema]
        for key, (sub, required) in schema.items():
            if key in value:
                errors += _check(value[key], sub, f"{where}.{key}")
            elif required:
                errors.append(f"{where}.{key}: required")
        return errors
    if isinstance(schema, tuple):
        kind, sub = schema
        if kind == "list":
            if not isinstance(value, list) or not value:
                return [f"{where}: expected a non-empty list"]
            return [e for i, item in enumerate(value) for e in _check(item, sub, f"{where}[{i}]")]
        if not isinstance(value, dict):
            return [f"{where}: expected a map"]
        return [e for k, item in value.items() for e in _check(item, sub, f"{where}.{k}")]
    if isinstance(schema, str) and schema.startswith("k8s:"):
        try:
            getattr(k8s, schema[4:]).model_validate(value, strict=True)
        except Exception as exc:  # noqa: BLE001 - reported as a schema error
            return [f"{where}: {exc}"]
        return []
    types = {S: (str,), N: (int,), B: (bool,)}[schema]
    if not isinstance(value, types) or (schema == N and isinstance(value, bool)):
        return [f"{where}: expected {schema}, got {type(value).__name__}"]
    return []


def test_keda_objects_match_their_schema(variant: tuple[dict[str, Any], list[Doc]]) -> None:
    _, docs = variant
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            assert _check(doc, SCALED_OBJECT, "ScaledObject") == []
            for trigger in doc["spec"]["triggers"]:
                assert trigger["type"] == "kafka"
                assert set(trigger["metadata"]) <= KAFKA_TRIGGER_KEYS
        elif doc["kind"] == "TriggerAuthentication":
            assert _check(doc, TRIGGER_AUTHENTICATION, "TriggerAuthentication") == []
            assert {r["parameter"] for r in doc["spec"]["secretTargetRef"]} <= KEDA_AUTH_PARAMETERS


def test_keda_schema_rejects() -> None:
    so = copy.deepcopy(_one(_docs(render.render()), "ScaledObject"))
    so["spec"]["maxReplicaCount"] = "12"
    so["spec"]["scaleTargetRef"].pop("name")
    so["spec"]["triggerz"] = []
    errors = _check(so, SCALED_OBJECT, "so")
    assert len(errors) == 3, errors


# ---- cross-references -------------------------------------------------------------------
def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")]


def test_selectors_match_their_pods_only(variant: tuple[dict[str, Any], list[Doc]]) -> None:
    _, docs = variant
    workloads = _pod_workloads(docs)
    for w in workloads:
        assert set(w["spec"]["selector"]) == {"matchLabels"}
        assert _selects(w["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
        for other in workloads:
            if other is not w:  # no workload adopts another's pods
                assert not _selects(w["spec"]["selector"]["matchLabels"],
                                    other["spec"]["template"]["metadata"]["labels"])
    sts = _one(docs, "StatefulSet")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    pdb = _one(docs, "PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert [w for w in workloads if _selects(pdb["spec"]["selector"]["matchLabels"],
                                             w["spec"]["template"]["metadata"]["labels"])] == [sts]
    assert pdb["spec"]["maxUnavailable"] == 1
    for svc in (d for d in docs if d["kind"] == "Service"):
        targets = [w for w in workloads
                   if _selects(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        assert len(targets) == 1, svc["metadata"]["name"]
        container = targets[0]["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]]
    governing = _one(docs, "Service", sts["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert _selects(governing["spec"]["selector"], pod_labels)


def test_probes_hit_the_metrics_port(variant: tuple[dict[str, Any], list[Doc]]) -> None:
    values, docs = variant
    for w in _pod_workloads(docs):
        container = w["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in container:
                port = container[probe]["httpGet"]["port"]
                assert (port in ports) if isinstance(port, str) else (port in ports.values())
        annotated = int(w["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"])
        assert annotated in ports.values()
    sts = _one(docs, "StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == (
        values["metricsPort"]) == int(values["derived"]["config"]["RUNG_METRICS__PORT"])
    assert "replicas" not in sts["spec"], "KEDA owns the replica count"
    monitors = [d for d in docs if d["kind"] == "Deployment"]
    for mon in monitors:
        container = mon["spec"]["template"]["spec"]["containers"][0]
        args = container["args"]
        assert args[0] == "monitor"
        assert int(args[args.index("--metrics-port") + 1]) == container["ports"][0]["containerPort"]
        assert mon["spec"]["replicas"] == 1


def test_scaler_is_capped_and_watches_the_workers_group(
        variant: tuple[dict[str, Any], list[Doc]]) -> None:
    values, docs = variant
    config = _one(docs, "ConfigMap")["data"]
    partitions = int(config["RUNG_TOPICS__PARTITIONS"])
    so = _one(docs, "ScaledObject")
    sts = _one(docs, "StatefulSet")
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                      "name": sts["metadata"]["name"]}
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == config["RUNG_KAFKA__BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == config["RUNG_KAFKA__GROUP_ID"]
    expected_topic = Settings(topics={"prefix": config["RUNG_TOPICS__PREFIX"]}).topics.names()
    assert meta["topic"] == expected_topic.transactions
    assert meta["allowIdleConsumers"] == "false"
    scaling = values["scaling"]
    assert int(meta["lagThreshold"]) == math.ceil(
        scaling["recordsPerSecondPerWorker"] * scaling["toleratedLagS"]) >= 1
    auth = [d for d in docs if d["kind"] == "TriggerAuthentication"]
    if values["kafka"]["sasl"]["enabled"]:
        assert trigger["authenticationRef"]["name"] == _one(auth, "TriggerAuthentication")["metadata"]["name"]
        assert meta["sasl"] == render.KEDA_SASL[config["RUNG_KAFKA__SASL_MECHANISM"]]
        assert meta.get("tls") == ("enable" if values["derived"]["kafkaTls"] else None)
    else:
        assert auth == [] and "authenticationRef" not in trigger and "sasl" not in meta


def _setting_names() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for section, info in Settings.model_fields.items():
        out[section.upper()] = {k.upper(): f for k, f in info.annotation.model_fields.items()}
    return out


def _container_env(doc: Doc, configmaps: dict[str, dict[str, str]]) -> Iterator[
        tuple[str, dict[str, Any], dict[str, str]]]:
    """(container name, raw env entries by name, resolved plain environment)."""
    pod = doc["spec"]["template"]["spec"]
    for container in pod["containers"]:
        resolved: dict[str, str] = {}
        for src in container.get("envFrom", []):
            name = src["configMapRef"]["name"]
            assert name in configmaps, f"envFrom names a ConfigMap that is not rendered: {name}"
            resolved.update(configmaps[name])
        entries = {e["name"]: e for e in container.get("env", [])}
        for name, entry in entries.items():
            if "value" in entry:
                resolved[name] = entry["value"]
            elif "fieldRef" in entry["valueFrom"]:
                assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
                resolved[name] = f"{doc['metadata']['name']}-0"
            else:
                resolved[name] = "secret-from-" + entry["valueFrom"]["secretKeyRef"]["name"]
        yield container["name"], entries, resolved


def test_environment_is_real_settings(variant: tuple[dict[str, Any], list[Doc]],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    values, docs = variant
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    fields = _setting_names()
    secrets = {values["kafka"]["sasl"]["secretName"], values["redis"]["passwordSecret"]["name"]}
    for w in _pod_workloads(docs):
        for container, entries, env in _container_env(w, configmaps):
            for name in env:
                if not name.startswith("RUNG_"):
                    assert name == "POD_NAME", f"{container}: unexpected variable {name}"
                    continue
                section, _, key = name.removeprefix("RUNG_").partition("__")
                assert key.split("__")[0] in fields.get(section, {}), f"{container}: not a setting: {name}"
            for entry in entries.values():
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:  # only secrets the values declare; never a literal password
                    assert ref["name"] in secrets
            assert not any("PASSWORD" in n for n in configmaps[values["derived"]["configName"]])
            for name in list(os.environ):
                if name.startswith("RUNG_") or name == "POD_NAME":
                    monkeypatch.delenv(name)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            settings = Settings()  # validates every value, as the worker will
            assert settings.metrics.host == "0.0.0.0"
            if "POD_NAME" in env:  # the worker: the pod name is the instance id
                assert settings.kafka.instance_id == env["POD_NAME"]
                assert settings.kafka.effective_transactional_id() == (
                    f"{values['kafka']['groupId']}-{env['POD_NAME']}")
            if values["derived"]["kafkaTls"]:
                mounts = {m["mountPath"] for m in w["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
                assert os.path.dirname(settings.kafka.ssl_ca_location or "") in mounts


def test_workers_get_the_pod_name_from_the_downward_api() -> None:
    sts = _one(_docs(render.render()), "StatefulSet")
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "RUNG_KAFKA__INSTANCE_ID" not in env and "RUNG_KAFKA__TRANSACTIONAL_ID" not in env
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 20


def test_sizing_example_matches_the_committed_bench() -> None:
    """values.yaml plans at about half of the healthy records/s the latest bench measured."""
    import json

    latest = sorted(BENCH_RESULTS.glob("bench-*.json"))[-1]
    healthy = json.loads(latest.read_text())["results"]["throughput"]["healthy"]["records_per_s"]
    planned = _values()["scaling"]["recordsPerSecondPerWorker"]
    assert 0.4 * healthy <= planned <= 0.6 * healthy, (latest.name, healthy, planned)


# ---- the instance id ------------------------------------------------------------------------
def test_instance_id_resolution_order() -> None:
    host, pid = "box", 4242
    # 3. nothing set: hostname-pid, unique among concurrent workers on one machine
    assert default_instance_id(env={}, hostname=host, pid=pid) == "box-4242"
    # 2. Kubernetes: the pod name, stable across restarts of a StatefulSet pod
    assert default_instance_id(env={"POD_NAME": "rung-worker-3"}, hostname=host, pid=pid) == (
        "rung-worker-3")
    assert default_instance_id(env={"POD_NAME": "  "}, hostname=host, pid=pid) == "box-4242"
    # 1. a slot: stable, on the pod or on the host
    assert default_instance_id(2, env={}, hostname=host, pid=pid) == "box-2"
    assert default_instance_id(0, env={"POD_NAME": "rung-worker-3"}, hostname=host) == (
        "rung-worker-3-0")


def test_instance_id_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RUNG_KAFKA__INSTANCE_ID", "RUNG_KAFKA__INSTANCE_SLOT", "POD_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert KafkaSettings().instance_id.endswith(f"-{os.getpid()}")
    monkeypatch.setenv("POD_NAME", "rung-worker-1")
    assert Settings().kafka.instance_id == "rung-worker-1"
    assert Settings().kafka.effective_transactional_id() == "rung-scorer-rung-worker-1"
    monkeypatch.setenv("RUNG_KAFKA__INSTANCE_SLOT", "4")
    assert Settings().kafka.instance_id == "rung-worker-1-4"
    monkeypatch.delenv("POD_NAME")
    assert Settings().kafka.instance_id.endswith("-4")
    monkeypatch.setenv("RUNG_KAFKA__INSTANCE_ID", "explicit")  # always wins
    assert Settings().kafka.instance_id == "explicit"
    monkeypatch.setenv("RUNG_KAFKA__INSTANCE_SLOT", "-1")
    with pytest.raises(ValueError):
        Settings()


def test_instance_id_survives_cli_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "rung-worker-2")
    s = load_settings(kafka__group_id="g")
    assert s.kafka.instance_id == "rung-worker-2"
    assert s.kafka.effective_transactional_id() == "g-rung-worker-2"
    assert load_settings(kafka__instance_id="x").kafka.instance_id == "x"
