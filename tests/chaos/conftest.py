"""The chaos suite reuses the integration stack fixtures (one real Kafka + Redis per run)
and collects every scenario's counts into benchmarks/results/chaos.json at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.harness import Results
from tests.integration.conftest import (  # noqa: F401 - fixtures re-exported
    kafka_conf,
    prefix,
    redis_url,
    stack,
    stack_state,
    topic_names,
)


@pytest.fixture(scope="session")
def results() -> Iterator[Results]:
    collected = Results()
    yield collected
    collected.write()
