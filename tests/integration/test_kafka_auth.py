"""rung against an authenticated broker: SASL/SCRAM-SHA-512 over TLS.

A second local stack, started here with `security="sasl_ssl"`: its client
listener demands SCRAM credentials and speaks TLS with a CA generated at
start. rung's worker reads and writes only through that listener, with its
ordinary `Settings.kafka` (security protocol, mechanism, user, password, CA).
A wrong password must end in an authentication error, not a silent retry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from scorers.deadline import Deadline
from stream_app.config import KafkaSettings, RedisSettings, Settings, TopicSettings
from stream_app.devstack.produce import produce_events
from stream_app.devstack.stack import LocalStack, StackState
from stream_app.kafka.admin import create_rung_topics
from stream_app.kafka.auth import KafkaAuthError, check_credentials
from stream_app.kafka.readback import read_topic
from stream_app.live.worker import BatchScorer, Worker
from topics.codec import decode_score
from topics.schemas import Action, Score, Tier, Transaction

USERS = {"rung-worker": "worker-pw-1", "ops": "ops-pw-2"}
N_EVENTS = 120


@pytest.fixture(scope="module")
def sasl_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackState]:
    local = LocalStack(Path(tmp_path_factory.mktemp("rung-sasl")), kafka_heap_mb=384,
                       security="sasl_ssl", sasl_mechanism="SCRAM-SHA-512", users=USERS)
    state = local.up()
    try:
        yield state
    finally:
        local.down()


def _settings(state: StackState, prefix: str, **kafka: Any) -> Settings:
    return Settings(kafka=KafkaSettings(**{**state.kafka_settings("rung-worker"), **kafka},
                                        group_id=f"{prefix}-g", transaction_timeout_s=20.0),
                    topics=TopicSettings(prefix=prefix, partitions=3),
                    redis=RedisSettings(enabled=False))


class _FixedScorer:
    """Stands in for the ladder until `build_scorer` can load its models."""

    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline) -> list[Score]:
        return [Score(transaction_id=t.transaction_id, score=0.0, action=Action.ALLOW,
                      flag_for_review=True, tier=Tier.DEFAULT, model_version="test",
                      confidence=0.0, reasons=("auth-test",), latency_s=0.0,
                      scored_at_s=time.time()) for t in txs]


def _scorer(settings: Settings) -> BatchScorer:
    try:
        from scorers.models.manifest import ModelIntegrityError
        from stream_app.wiring import build_scorer
    except ImportError:
        return _FixedScorer()
    try:
        return build_scorer(settings)
    except (FileNotFoundError, ModelIntegrityError):
        return _FixedScorer()


def _events(prefix: str) -> list[Transaction]:
    return [Transaction(transaction_id=f"{prefix}-{i}", event_time_s=None, customer_id=f"c{i % 7}",
                        terminal_id=f"t{i % 5}", amount=10.0 + i, currency="EUR",
                        merchant_category="5411", is_international=False,
                        has_international_history=False, account_age_days=400, channel="pos")
            for i in range(N_EVENTS)]


def test_state_records_the_sasl_listener(sasl_stack: StackState) -> None:
    assert sasl_stack.security_protocol == "SASL_SSL"
    assert sasl_stack.sasl_mechanism == "SCRAM-SHA-512"
    assert sasl_stack.sasl_users == USERS
    assert sasl_stack.sasl_bootstrap_servers != sasl_stack.bootstrap_servers
    ca = Path(str(sasl_stack.ssl_ca_location))
    assert ca.read_text().startswith("-----BEGIN CERTIFICATE-----")  # PEM, for librdkafka
    assert check_credentials(sasl_stack.client_config("ops"), timeout_s=30.0) == 1


def test_worker_scores_through_the_authenticated_listener(sasl_stack: StackState) -> None:
    prefix = f"auth{time.monotonic_ns() % 10**8}"
    settings = _settings(sasl_stack, prefix)
    conf = settings.kafka.client_config()
    assert conf["security.protocol"] == "SASL_SSL" and conf["ssl.ca.location"]
    names = settings.topics.names()
    create_rung_topics(conf, names, partitions=3)
    sent = produce_events(conf, names.transactions, _events(prefix), rate_per_s=0.0)
    assert len(sent.ids) == N_EVENTS

    worker = Worker(settings, _scorer(settings), shutdown_timeout_s=10.0)
    runner = threading.Thread(target=worker.run, name="auth-worker", daemon=True)
    runner.start()
    try:
        end = time.monotonic() + 90.0
        while worker.records_committed < N_EVENTS and time.monotonic() < end:
            if not runner.is_alive():
                break
            time.sleep(0.2)
    finally:
        worker.stop()
        runner.join(30.0)
    assert worker.fatal_reason is None
    scores = [decode_score(r.value) for r in read_topic(conf, names.scores) if r.value]
    assert sorted(s.transaction_id for s in scores) == sorted(sent.ids)  # one each, none lost


def test_plaintext_client_cannot_use_the_sasl_listener(sasl_stack: StackState) -> None:
    assert sasl_stack.sasl_bootstrap_servers is not None
    admin = AdminClient({"bootstrap.servers": sasl_stack.sasl_bootstrap_servers,
                         "socket.timeout.ms": 2000, "log_level": 0})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5.0)


def test_wrong_password_fails_fast_with_an_authentication_error(sasl_stack: StackState) -> None:
    settings = _settings(sasl_stack, "wrongpw", sasl_password="not-the-password")
    # An authentication error, not a TimeoutError: the broker's refusal is reported.
    with pytest.raises(KafkaAuthError, match="(?i)authentication"):
        check_credentials(settings.kafka.client_config(), timeout_s=60.0)
    with pytest.raises(KafkaAuthError):
        check_credentials(sasl_stack.client_config("nobody", "nobody-pw"), timeout_s=60.0)
