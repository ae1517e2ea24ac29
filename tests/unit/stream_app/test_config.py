from __future__ import annotations

import pytest
from pydantic import ValidationError

from stream_app.config import Settings, load_settings


def test_env_nested_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNG_KAFKA__BOOTSTRAP_SERVERS", "broker:9092")
    monkeypatch.setenv("RUNG_BATCH__DEADLINE_S", "0.08")
    monkeypatch.setenv("RUNG_KAFKA__EXTRA", '{"socket.keepalive.enable": "true"}')
    s = Settings()
    assert s.kafka.bootstrap_servers == "broker:9092"
    assert s.batch.deadline_s == 0.08
    assert s.kafka.client_config()["socket.keepalive.enable"] == "true"


def test_cli_overrides_win_and_none_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNG_TOPICS__PREFIX", "from-env")
    s = load_settings(topics__prefix="from-cli", kafka__group_id=None)
    assert s.topics.prefix == "from-cli"
    assert s.kafka.group_id == "rung-scorer"


@pytest.mark.parametrize("key", ["enable.auto.commit", "transactional.id", "Not A Key"])
def test_pass_through_refuses_reserved_and_malformed_keys(key: str) -> None:
    with pytest.raises(ValidationError):
        load_settings(kafka__extra={key: "x"})


def test_secrets_are_masked_in_the_logged_configuration() -> None:
    s = load_settings(kafka__sasl_password="hunter2", kafka__sasl_username="rung",
                      kafka__extra={"ssl.key.password": "s3cret"},
                      redis__url="redis://:topsecret@redis:6379/0", redis__password="pw")
    text = repr(s.redacted())
    for secret in ("hunter2", "s3cret", "topsecret", "'pw'"):
        assert secret not in text
    assert s.kafka.client_config()["sasl.password"] == "hunter2"
    assert "hunter2" not in repr(s)


def test_transactional_id_is_stable_per_instance() -> None:
    s = load_settings(kafka__group_id="g", kafka__instance_id="host-a")
    assert s.kafka.effective_transactional_id() == "g-host-a"
    assert load_settings(kafka__transactional_id="fixed").kafka.effective_transactional_id() == "fixed"


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.kafka = s.kafka  # type: ignore[misc]


def test_feature_store_replies_are_acknowledged_at_once_unless_turned_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().redis.tcp_quick_ack is True
    monkeypatch.setenv("RUNG_REDIS__TCP_QUICK_ACK", "false")
    assert Settings().redis.tcp_quick_ack is False
