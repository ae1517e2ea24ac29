"""Marks every test under tests/integration as `integration` (before `-m` selects)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/integration/" in str(item.fspath) and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Each test starts with structlog's defaults: a CLI run in one test (which
    configures logging, maybe at warning level) must not change what the next sees."""
    import structlog

    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
