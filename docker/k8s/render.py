#!/usr/bin/env python3
"""Render rung's Kubernetes manifests from one source: `values.yaml` + `templates/`.

    .venv/bin/python docker/k8s/render.py            # write docker/k8s/rendered/*.yaml
    .venv/bin/python docker/k8s/render.py --check    # exit 1 if rendered/ is stale

Templates are plain YAML. A string `"{{ path.to.value }}"` is replaced by the value
itself (an int stays an int); inside longer text it is interpolated; a `| str`
filter makes any value a string (ConfigMap data, KEDA metadata). A mapping with
`x-rung-when: "{{ flag }}"` is dropped when the flag is false, and
`x-rung-merge: "{{ mapping }}"` merges a mapping from the values into its parent.
Derived values (`derived.*`) are computed here, with the checks that must hold
before anything is written (maxReplicas <= partitions, ...).

Only PyYAML is needed (a dev dependency); this is never imported by the worker.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
VALUES = HERE / "values.yaml"
TEMPLATES = HERE / "templates"
RENDERED = HERE / "rendered"
HEADER = ("# Rendered by docker/k8s/render.py from docker/k8s/values.yaml and {template}.\n"
          "# Do not edit: change the values or the template and render again.\n")

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*(?:\|\s*(str))?\s*\}\}")
_DROP = object()
# rung's (librdkafka's) SASL mechanism -> the KEDA Kafka scaler's `sasl` value
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


class RenderError(ValueError):
    """The values are inconsistent or a template names a value that does not exist."""


def transactions_topic(prefix: str) -> str:
    return f"{prefix}.transactions"  # = topics.catalog.TopicNames.with_prefix(prefix)


def derive(values: dict[str, Any]) -> dict[str, Any]:
    """Values plus `derived`: what the templates need that is computed, and checked."""
    v = dict(values)
    partitions = int(v["topics"]["partitions"])
    scaling = v["scaling"]
    lo, hi = int(scaling["minReplicas"]), int(scaling["maxReplicas"])
    if partitions < 1:
        raise RenderError("topics.partitions must be >= 1")
    if hi > partitions:
        raise RenderError(f"scaling.maxReplicas ({hi}) exceeds topics.partitions ({partitions}):"
                          " a worker without a partition idles and is never ready")
    if not 1 <= lo <= hi:
        raise RenderError(f"need 1 <= scaling.minReplicas ({lo}) <= maxReplicas ({hi})")
    lag = math.ceil(float(scaling["recordsPerSecondPerWorker"]) * float(scaling["toleratedLagS"]))
    if lag < 1:
        raise RenderError("lag threshold must be >= 1 record")
    v["derived"] = {
        "lagThreshold": lag,
        "transactionsTopic": transactions_topic(v["topics"]["prefix"]),
        "workerName": f"{v['name']}-worker",
        "monitorName": f"{v['name']}-monitor",
        "configName": f"{v['name']}-config",
        "kafkaTls": v["kafka"]["securityProtocol"] in ("SSL", "SASL_SSL"),
        "caPath": "/etc/rung/kafka/ca.crt",
    }
    keda_auth: dict[str, str] = {}
    if v["kafka"]["sasl"]["enabled"]:
        mechanism = v["kafka"]["sasl"]["mechanism"]
        if mechanism not in KEDA_SASL:
            raise RenderError(f"kafka.sasl.mechanism must be one of {sorted(KEDA_SASL)}")
        keda_auth["sasl"] = KEDA_SASL[mechanism]
    if v["derived"]["kafkaTls"]:
        keda_auth["tls"] = "enable"
    v["derived"]["kedaAuth"] = keda_auth
    v["derived"]["config"] = _settings(v)
    return v


def _settings(v: dict[str, Any]) -> dict[str, str]:
    """The non-secret RUNG_* settings of the ConfigMap (secrets come from Secret refs)."""
    kafka = v["kafka"]
    conf: dict[str, Any] = {
        "RUNG_KAFKA__BOOTSTRAP_SERVERS": kafka["bootstrapServers"],
        "RUNG_KAFKA__GROUP_ID": kafka["groupId"],
        "RUNG_KAFKA__DELIVERY": "exactly_once",
        "RUNG_KAFKA__TRANSACTION_TIMEOUT_S": kafka["transactionTimeoutS"],
        "RUNG_KAFKA__SECURITY_PROTOCOL": kafka["securityProtocol"],
    }
    if kafka["sasl"]["enabled"]:
        conf["RUNG_KAFKA__SASL_MECHANISM"] = kafka["sasl"]["mechanism"]
    if v["derived"]["kafkaTls"]:
        conf["RUNG_KAFKA__SSL_CA_LOCATION"] = v["derived"]["caPath"]
    conf.update({
        "RUNG_TOPICS__PREFIX": v["topics"]["prefix"],
        "RUNG_TOPICS__PARTITIONS": v["topics"]["partitions"],
        "RUNG_REDIS__URL": v["redis"]["url"],
        "RUNG_BATCH__DEADLINE_S": v["batch"]["deadlineS"],
        "RUNG_BATCH__MAX_RECORDS": v["batch"]["maxRecords"],
        "RUNG_METRICS__HOST": "0.0.0.0",
        "RUNG_METRICS__PORT": v["metricsPort"],
    })
    for key, value in (v.get("extraSettings") or {}).items():
        if not key.startswith("RUNG_"):
            raise RenderError(f"extraSettings: {key!r} is not a RUNG_* setting")
        if key in conf:
            raise RenderError(f"extraSettings: {key!r} is set from the structured values")
        conf[key] = value
    return {k: _as_str(val) for k, val in conf.items()}


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RenderError(f"no value {dotted!r}")
        node = node[part]
    return node


def _as_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _substitute(text: str, values: dict[str, Any]) -> Any:
    whole = _PLACEHOLDER.fullmatch(text.strip())
    if whole:
        value = _lookup(values, whole.group(1))
        return _as_str(value) if whole.group(2) == "str" else value
    return _PLACEHOLDER.sub(lambda m: _as_str(_lookup(values, m.group(1))), text)


def _render(node: Any, values: dict[str, Any]) -> Any:
    if isinstance(node, str):
        return _substitute(node, values)
    if isinstance(node, list):
        items = [_render(item, values) for item in node]
        return [item for item in items if item is not _DROP]
    if isinstance(node, dict):
        if "x-rung-when" in node and not _render(node["x-rung-when"], values):
            return _DROP
        out: dict[str, Any] = {}
        for key, child in node.items():
            if key == "x-rung-when":
                continue
            if key == "x-rung-merge":
                merged = _render(child, values)
                if not isinstance(merged, dict):
                    raise RenderError("x-rung-merge needs a mapping")
                out.update({k: _as_str(val) for k, val in merged.items()})
                continue
            rendered = _render(child, values)
            if rendered is not _DROP:
                out[str(_substitute(key, values))] = rendered
        return out
    return node


def render(values_path: Path = VALUES, templates: Path = TEMPLATES) -> dict[str, str]:
    """{file name: YAML text} for every template; nothing is written."""
    values = derive(yaml.safe_load(values_path.read_text()))
    out: dict[str, str] = {}
    for template in sorted(templates.glob("*.yaml")):
        docs = [_render(doc, values) for doc in yaml.safe_load_all(template.read_text())
                if doc is not None]
        docs = [d for d in docs if d is not _DROP]
        if not docs:
            continue
        body = "---\n".join(yaml.safe_dump(d, sort_keys=False, default_flow_style=False,
                                           width=100) for d in docs)
        rel = template.relative_to(HERE.parent.parent) if template.is_relative_to(
            HERE.parent.parent) else template
        out[template.name] = HEADER.format(template=rel.as_posix()) + body
    return out


def write(rendered: dict[str, str], target: Path = RENDERED) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*.yaml"):
        if stale.name not in rendered:
            stale.unlink()
    for name, text in rendered.items():
        (target / name).write_text(text)


def stale_files(rendered: dict[str, str], target: Path = RENDERED) -> list[str]:
    """Names whose committed text differs from `rendered` (or is missing or extra)."""
    have = {p.name: p.read_text() for p in target.glob("*.yaml")} if target.exists() else {}
    return sorted(n for n in set(have) | set(rendered) if have.get(n) != rendered.get(n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=Path, default=VALUES)
    parser.add_argument("--out", type=Path, default=RENDERED)
    parser.add_argument("--check", action="store_true", help="fail if --out is stale")
    args = parser.parse_args(argv)
    try:
        rendered = render(args.values)
    except RenderError as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 2
    if args.check:
        stale = stale_files(rendered, args.out)
        for name in stale:
            print(f"stale: {args.out / name}", file=sys.stderr)
        return 1 if stale else 0
    write(rendered, args.out)
    for name in rendered:
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
