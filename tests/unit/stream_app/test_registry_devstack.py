"""The local registry's build cache and start-up failures (stream_app.devstack.registry);
the real registry runs in tests/integration/test_registry_formats.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stream_app.devstack import registry


def _cached_app(cache: Path, jar: bytes) -> Path:
    app = cache / f"apicurio-registry-{registry.APICURIO_VERSION}"
    app.mkdir(parents=True)
    (app / registry.RUNNER_JAR).write_bytes(jar)
    (app / ".complete").write_text(registry.APICURIO_VERSION)
    return app


def test_a_complete_build_is_reused_without_maven(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no mvn: must not be needed
    app = _cached_app(tmp_path, b"jar")
    assert registry.registry_app() == app


def test_a_partial_build_is_rebuilt_and_needs_maven(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    (tmp_path / f"apicurio-registry-{registry.APICURIO_VERSION}").mkdir()  # no marker
    with pytest.raises(registry.RegistryError, match="Maven"):
        registry.registry_app()


@pytest.mark.skipif(shutil.which("java") is None, reason="needs a java runtime")
def test_a_registry_that_exits_at_start_is_reported_with_its_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNG_CACHE_DIR", str(tmp_path / "cache"))
    _cached_app(tmp_path / "cache", b"not a jar")
    with pytest.raises(registry.RegistryError, match="exited with") as err:
        registry.start_registry(tmp_path / "run", timeout_s=60.0)
    assert str(tmp_path / "run" / registry.LOG_FILE) in str(err.value)
    assert (tmp_path / "run" / registry.LOG_FILE).read_text().strip()


def test_nothing_listening_does_not_answer() -> None:
    port = registry.free_port()
    assert not registry.registry_answers(f"http://127.0.0.1:{port}{registry.CCOMPAT_PATH}", 1.0)
