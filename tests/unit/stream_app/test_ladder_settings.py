"""Ladder settings from the environment: breaker overrides by name, defaults stated
once in scorers.config, the cache off unless asked for."""

from __future__ import annotations

import pytest

from scorers.config import DEFAULT_BREAKERS, LadderConfig
from stream_app.config import Settings


def test_breaker_overrides_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNG_LADDER__BREAKERS__PRIMARY__OPEN_WAIT_S", "5")
    monkeypatch.setenv("RUNG_LADDER__BREAKERS__CACHE__MINIMUM_CALLS", "4")
    configs = Settings().ladder.breaker_configs()
    assert configs["primary"].open_wait_s == 5.0
    assert configs["primary"].minimum_calls == DEFAULT_BREAKERS["primary"].minimum_calls
    # an override keeps the rest of that breaker's own defaults
    assert configs["cache"].minimum_calls == 4
    assert configs["cache"].slow_call_duration_s == DEFAULT_BREAKERS["cache"].slow_call_duration_s
    assert configs["feature_store"] == DEFAULT_BREAKERS["feature_store"]


def test_ladder_defaults_are_the_core_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RUNG_LADDER__CACHE_ENABLED", "RUNG_MODELS__TORCH_THREADS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.ladder.ladder_config() == LadderConfig()
    assert settings.ladder.cache_enabled is False
    assert settings.models.torch_threads == 1
    monkeypatch.setenv("RUNG_LADDER__CACHE_ENABLED", "true")
    monkeypatch.setenv("RUNG_LADDER__MAX_POISON_ROWS", "3")
    config = Settings().ladder.ladder_config()
    assert config.cache.enabled and config.max_poison_rows == 3
