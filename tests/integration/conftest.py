"""One real local stack (Kafka KRaft + Redis) per test run, shared by every
integration test. Tests isolate themselves with unique topic prefixes and
consumer groups; nothing here is mocked."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream_app.devstack.stack import LocalStack, StackState
from stream_app.kafka.admin import create_rung_topics
from topics.catalog import TopicNames


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    run_dir = Path(tmp_path_factory.mktemp("rung-stack"))
    local = LocalStack(run_dir)
    local.up()
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def stack_state(stack: LocalStack) -> StackState:
    state = stack.state()
    assert state is not None
    return state


@pytest.fixture(scope="session")
def kafka_conf(stack_state: StackState) -> dict[str, Any]:
    return {"bootstrap.servers": stack_state.bootstrap_servers}


@pytest.fixture(scope="session")
def redis_url(stack_state: StackState) -> str:
    return stack_state.redis_url


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real schema registry (Apicurio, Confluent API; stream_app.devstack.registry),
    started only when a test asks for it; yields its Confluent-compatible base URL."""
    from stream_app.devstack.registry import start_registry, stop_registry

    running = start_registry(Path(tmp_path_factory.mktemp("rung-registry")))
    try:
        yield running.url
    finally:
        stop_registry(running.pid)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def topic_names(kafka_conf: dict[str, Any], prefix: str) -> TopicNames:
    names = TopicNames.with_prefix(prefix)
    create_rung_topics(kafka_conf, names, partitions=6)
    return names
