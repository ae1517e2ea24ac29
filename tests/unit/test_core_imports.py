"""The scoring core never imports the Kafka edge or the metrics library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("confluent_kafka", "faust", "prometheus_client", "stream_app")
ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_forbidden_import_statement_in_scorers() -> None:
    files = sorted((ROOT / "scorers").rglob("*.py"))
    assert files
    bad = {str(f.relative_to(ROOT)): sorted(_imports(f) & set(FORBIDDEN)) for f in files}
    assert {f: names for f, names in bad.items() if names} == {}


def test_importing_every_scorers_module_loads_none_of_them() -> None:
    code = (
        "import importlib, pkgutil, sys, scorers\n"
        "for m in pkgutil.walk_packages(scorers.__path__, 'scorers.'):\n"
        "    importlib.import_module(m.name)\n"
        f"print(','.join(sorted(n for n in {FORBIDDEN!r} if n in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == ""


# ---- the layout: what production imports, and no cycles -------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _edges(package: str) -> dict[str, set[str]]:
    """Every import (module level or inside a function) between modules of `package`."""
    files = {_module_name(f): f for f in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in files and target != name and target != package:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_in_stream_app_or_scorers() -> None:
    assert _cycles(_edges("stream_app")) == []
    assert _cycles(_edges("scorers")) == []


def test_production_modules_never_import_the_dev_stack() -> None:
    graph = _edges("stream_app")
    allowed = ("stream_app.devstack", "stream_app.cli")  # the CLI offers `rung stack` and `rung demo`
    bad = {m: sorted(t for t in deps if t.startswith("stream_app.devstack"))
           for m, deps in graph.items() if not m.startswith(allowed)}
    assert {m: t for m, t in bad.items() if t} == {}


def test_the_runtime_path_loads_no_lab_no_plotting_no_dev_stack() -> None:
    code = (
        "import sys\n"
        "import scorers.ladder, stream_app.wiring, stream_app.live.runner, stream_app.replay.run\n"
        "bad = [m for m in sys.modules if m.startswith(('matplotlib', 'scorers.lab',"
        " 'stream_app.devstack'))]\n"
        "print(','.join(sorted(bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == ""
