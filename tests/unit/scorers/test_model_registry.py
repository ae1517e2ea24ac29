"""The model registry: versions, checksum-verified promotion, rollback, canary, the CLI."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from ladder_fakes import PRIMARY_NAMES, write_model_dir
from typer.testing import CliRunner

from scorers.models.canary import RollbackBounds
from scorers.models.manifest import ModelIntegrityError
from scorers.models.registry import POINTER_FILE, Pointer, Registry, RegistryError


def corrupt(path: Path) -> None:
    """Flip bytes in the middle of a weights file: its sha256 no longer matches."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4] = bytes(b ^ 0xFF for b in data[mid:mid + 4])
    path.write_bytes(bytes(data))


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    src = write_model_dir(tmp_path / "src", PRIMARY_NAMES, version="v1")
    r = Registry(tmp_path / "registry", now=lambda: 1_700_000_000.0)
    for name in ("v1", "v2", "v3"):
        r.add(src, name)
    return r


def test_add_copies_renames_and_verifies(reg: Registry, tmp_path: Path) -> None:
    assert [v.version for v in reg.versions()] == ["v1", "v2", "v3"]
    assert all(v.problem == "" and v.manifest is not None for v in reg.versions())
    assert reg.verify("v2").version == "v2"  # the manifest's version is the dir's name
    with pytest.raises(RegistryError, match="already exists"):
        reg.add(tmp_path / "src", "v2")
    with pytest.raises(RegistryError, match="not a version name"):
        reg.version_dir("../escape")
    assert reg.pointer() == Pointer()  # nothing promoted yet


def test_promote_and_rollback_keep_a_history(reg: Registry) -> None:
    reg.promote("v1")
    reg.promote("v2", "better AP")
    p = reg.promote("v3")
    assert (p.champion, p.previous, p.generation) == ("v3", ("v1", "v2"), 3)
    assert reg.promote("v3") == p  # promoting the live version changes nothing
    p = reg.rollback("bad night")
    assert (p.champion, p.previous) == ("v2", ("v1",))
    assert [(e.action, e.version, e.reason) for e in p.events][-2:] == [
        ("promote", "v3", ""), ("rollback", "v2", "bad night")]
    assert reg.rollback().champion == "v1"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    assert Registry(reg.root).pointer() == reg.pointer()  # what is on disk


def test_a_corrupted_version_is_refused_and_the_pointer_is_untouched(reg: Registry) -> None:
    reg.promote("v1")
    before = (reg.root / POINTER_FILE).read_bytes()
    corrupt(reg.version_dir("v2") / "weights.pt")
    with pytest.raises(ModelIntegrityError, match="checksum mismatch"):
        reg.promote("v2")
    with pytest.raises(ModelIntegrityError):
        reg.start_canary("v2", 0.1)
    assert (reg.root / POINTER_FILE).read_bytes() == before
    listed = {v.version: v.problem for v in reg.versions()}
    assert "checksum mismatch" in listed["v2"] and listed["v1"] == listed["v3"] == ""


def test_a_manifest_naming_another_version_is_refused(reg: Registry) -> None:
    path = reg.version_dir("v3") / "manifest.json"
    data = json.loads(path.read_text())
    data["version"] = "v1"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelIntegrityError, match="names version 'v1'"):
        reg.promote("v3")


def test_canary_start_stop_and_promotion_of_the_candidate(reg: Registry) -> None:
    with pytest.raises(RegistryError, match="champion promoted first"):
        reg.start_canary("v2", 0.1)
    reg.promote("v1")
    with pytest.raises(RegistryError, match="fraction"):
        reg.start_canary("v2", 1.5)
    with pytest.raises(RegistryError, match="key"):
        reg.start_canary("v2", 0.1, key="amount")
    bounds = RollbackBounds(min_records=50, max_error_rate=0.02)
    p = reg.start_canary("v2", 0.1, bounds=bounds)
    assert p.canary is not None and (p.canary.version, p.canary.fraction) == ("v2", 0.1)
    assert Registry(reg.root).pointer().canary == p.canary  # bounds survive the round trip
    assert reg.stop_canary("x", version="v3").canary == p.canary  # not the canary: no change
    assert reg.stop_canary("rollback: error_rate").canary is None
    reg.start_canary("v2", 0.2)
    p = reg.promote("v2")  # promoting the candidate ends its canary
    assert (p.champion, p.canary) == ("v2", None)


def test_pointer_writes_are_atomic_and_serialised(reg: Registry) -> None:
    reg.promote("v1")
    errors: list[BaseException] = []

    def flip(n: int) -> None:
        try:
            for i in range(n):
                reg.promote("v2" if i % 2 == 0 else "v1")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=flip, args=(10,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    p = reg.pointer()
    assert p.generation == len(p.events)  # every change counted once: no lost update
    assert not [f for f in reg.root.iterdir() if f.name.startswith(f".{POINTER_FILE}")]
    assert json.loads((reg.root / POINTER_FILE).read_text())["generation"] == p.generation


def bad_arch_copy(src: Path, out: Path) -> Path:
    """The model with a manifest arch its weights cannot run (checksum still fine)."""
    shutil.copytree(src, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["arch"]["member"]["log1p_inputs"].append(99)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_cli_list_promote_rollback_canary(tmp_path: Path) -> None:
    from scorers.models.defaults import PRIMARY_DIR
    from stream_app.cli.app import app

    reg = Registry(tmp_path / "registry")
    for name in ("v1", "v2", "v3"):
        reg.add(PRIMARY_DIR, name)
    reg.add(bad_arch_copy(PRIMARY_DIR, tmp_path / "bad"), "bad-arch")
    run = CliRunner().invoke
    root = str(reg.root)
    assert run(app, ["models", "promote", "v1", "--registry", root]).exit_code == 0
    res = run(app, ["models", "promote", "v2", "--registry", root, "--reason", "AP up"])
    assert res.exit_code == 0 and "live: v2" in res.output
    res = run(app, ["models", "canary", "v3", "--fraction", "0.25", "--registry", root])
    assert res.exit_code == 0, res.output
    out = run(app, ["models", "list", "--registry", root]).output
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(("v", "b"))}
    assert "LIVE" in lines["v2"] and "CANARY 25.0%" in lines["v3"] and "previous" in lines["v1"]
    res = run(app, ["models", "rollback", "--registry", root])
    assert res.exit_code == 0 and "live: v1" in res.output
    # the checksum is fine but the worker could not load it: the load check refuses it
    res = run(app, ["models", "promote", "bad-arch", "--registry", root])
    assert res.exit_code == 1 and "bad-arch: load: IndexError" in res.output
    assert reg.pointer().champion == "v1"
    corrupt(reg.version_dir("v2") / "weights.pt")
    for check in ("--load-check", "--no-load-check"):
        res = run(app, ["models", "promote", "v2", "--registry", root, check])
        assert res.exit_code == 1 and "checksum mismatch" in res.output
    assert "REFUSED" in run(app, ["models", "list", "--registry", root]).output
    assert run(app, ["models", "canary-stop", "--registry", root]).exit_code == 0
    assert reg.pointer().canary is None and reg.pointer().champion == "v1"
