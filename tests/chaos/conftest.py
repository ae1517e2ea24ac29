"""The chaos suite runs over its own real stack (one Kafka + Redis per run, like the
integration tests) started with `faults=True`: Toxiproxy sits in front of Redis and of a
broker listener. `kafka_conf` / `redis_url` are the services' direct addresses (the
producers, the read-back and the process/model scenarios use them, so nothing of theirs
changes); `proxied_kafka_conf` / `proxied_redis_url` go through the proxies, and
`toxiproxy` drives them (tests/chaos/test_network_faults.py). Every scenario's counts are
collected into benchmarks/results/chaos.json at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream_app.devstack.stack import LocalStack, StackState
from stream_app.devstack.toxiproxy import ToxiproxyClient
from tests.chaos.harness import Results
from tests.integration.conftest import (  # noqa: F401 - fixtures re-exported
    prefix,
    topic_names,
)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    run_dir = Path(tmp_path_factory.mktemp("rung-chaos-stack"))
    local = LocalStack(run_dir, faults=True)
    local.up()
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def stack_state(stack: LocalStack) -> StackState:
    state = stack.state()
    assert state is not None and state.toxiproxy_api
    return state


@pytest.fixture(scope="session")
def kafka_conf(stack_state: StackState) -> dict[str, Any]:
    return {"bootstrap.servers": stack_state.direct_bootstrap}


@pytest.fixture(scope="session")
def redis_url(stack_state: StackState) -> str:
    return stack_state.direct_redis


@pytest.fixture(scope="session")
def proxied_kafka_conf(stack_state: StackState) -> dict[str, Any]:
    return {"bootstrap.servers": stack_state.bootstrap_servers}


@pytest.fixture(scope="session")
def proxied_redis_url(stack_state: StackState) -> str:
    return stack_state.redis_url


@pytest.fixture
def toxiproxy(stack: LocalStack) -> Iterator[ToxiproxyClient]:
    """The stack's Toxiproxy; every proxy is enabled and clean again after the test."""
    client = stack.toxiproxy()
    client.reset()
    try:
        yield client
    finally:
        client.reset()


@pytest.fixture(scope="session")
def results() -> Iterator[Results]:
    collected = Results()
    yield collected
    collected.write()
