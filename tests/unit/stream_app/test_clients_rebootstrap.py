"""Transactional producers never re-bootstrap (docs/repro/send_offsets_hang.py)."""

from __future__ import annotations

from stream_app.config import load_settings
from stream_app.kafka.clients import consumer_config, producer_config, replay_producer_config


def test_transactional_producers_do_not_rebootstrap_even_if_passed_through() -> None:
    s = load_settings(kafka__extra={"metadata.recovery.strategy": "rebootstrap"})
    assert producer_config(s)["metadata.recovery.strategy"] == "none"
    assert replay_producer_config(s, "replay-1")["metadata.recovery.strategy"] == "none"


def test_other_clients_keep_the_pass_through() -> None:
    s = load_settings(kafka__delivery="at_least_once",
                      kafka__extra={"metadata.recovery.strategy": "rebootstrap"})
    assert producer_config(s)["metadata.recovery.strategy"] == "rebootstrap"
    assert consumer_config(s)["metadata.recovery.strategy"] == "rebootstrap"
    # the replay's producer is transactional whatever the live delivery mode
    assert replay_producer_config(s, "replay-1")["metadata.recovery.strategy"] == "none"
