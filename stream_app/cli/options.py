"""Options and look-ups shared by every `rung` command module (no command lives here)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

Prefix = Annotated[str | None, typer.Option(help="topic name prefix (RUNG_TOPICS__PREFIX)")]
Bootstrap = Annotated[str | None, typer.Option(
    help="Kafka bootstrap servers (default: RUNG_KAFKA__BOOTSTRAP_SERVERS, "
         "KAFKA_BOOTSTRAP_SERVERS, or the local stack)")]


def bootstrap_servers_or_stack(explicit: str | None) -> str | None:
    """CLI option, then rung's env, then the standard env, then a running local stack."""
    if explicit:
        return explicit
    if os.environ.get("RUNG_KAFKA__BOOTSTRAP_SERVERS"):
        return None  # pydantic-settings reads it
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    from stream_app.devstack.stack import LocalStack

    state = LocalStack().state()
    return state.bootstrap_servers if state else None


def redis_url_or_stack() -> str | None:
    if os.environ.get("RUNG_REDIS__URL"):
        return None
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    from stream_app.devstack.stack import LocalStack

    state = LocalStack().state()
    return state.redis_url if state else None
