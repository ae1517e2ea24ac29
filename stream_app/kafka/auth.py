"""A start-up credentials check: fail fast when the broker refuses rung's SASL login.

librdkafka retries a refused SASL handshake forever; the worker calls
`check_credentials` once before it builds its clients.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


class KafkaAuthError(RuntimeError):
    """The broker refused the client's SASL credentials (or its TLS handshake)."""


def check_credentials(client_conf: Mapping[str, Any], timeout_s: float = 10.0) -> int:
    """Fail fast on bad credentials: return the broker count, or raise.

    librdkafka retries a refused SASL handshake forever, so a worker with a
    wrong password would otherwise wait out its first call's timeout (e.g.
    `init_transactions`). A throw-away producer is polled until either its
    metadata arrives or its error callback reports an authentication error.
    Raises `KafkaAuthError` for refused credentials and `TimeoutError` when
    the broker neither answers nor refuses within `timeout_s`.
    """
    from confluent_kafka import KafkaError, KafkaException, Producer

    auth_codes = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
                  KafkaError._SSL}
    refused: list[KafkaError] = []

    def on_error(err: KafkaError) -> None:
        if err.code() in auth_codes:
            refused.append(err)

    conf = {**client_conf, "error_cb": on_error, "log_level": 0}
    producer = Producer(conf)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        producer.poll(0.1)
        if refused:
            raise KafkaAuthError(f"Kafka refused the credentials: {refused[0].str()}")
        try:
            return len(producer.list_topics(timeout=0.5).brokers)
        except KafkaException:
            continue
    raise TimeoutError(f"Kafka at {client_conf.get('bootstrap.servers')} did not answer "
                       f"in {timeout_s:.0f}s")
