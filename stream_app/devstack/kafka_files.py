"""The local broker's configuration files: server.properties and log4j2.properties.

KRaft combined mode (broker + controller, node 1), loopback listeners, the internal
topics at replication factor 1 / min ISR 1, no initial rebalance delay, no topic
auto-creation (rung creates its topics), and logs in the run directory.
"""

from __future__ import annotations

from pathlib import Path

from stream_app.devstack.sasl import LISTENER

PROXIED_LISTENER = "PROXIED"


def server_properties(data_dir: Path, broker_port: int, controller_port: int,
                       client: tuple[int, str, list[str]] | None = None,
                       proxied: tuple[int, str] | None = None) -> str:
    """`client`: (port, security protocol, extra lines) of the SASL listener, if any.

    `proxied`: (bind port, advertised host:port) of a PLAINTEXT listener reached through
    Toxiproxy: the broker binds the proxy's upstream port but advertises the proxy's
    listen address, so a client that bootstraps through the proxy is sent back to the
    proxy for every later connection (partition leaders, coordinators) too."""
    listeners = f"PLAINTEXT://127.0.0.1:{broker_port}"
    advertised = listeners
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    extra: list[str] = []
    if client is not None:
        client_port, protocol, extra = client
        listeners += f",{LISTENER}://127.0.0.1:{client_port}"
        advertised += f",{LISTENER}://127.0.0.1:{client_port}"
        protocols += f",{LISTENER}:{protocol}"
    if proxied is not None:
        bind_port, proxy_address = proxied
        listeners += f",{PROXIED_LISTENER}://127.0.0.1:{bind_port}"
        advertised += f",{PROXIED_LISTENER}://{proxy_address}"
        protocols += f",{PROXIED_LISTENER}:PLAINTEXT"
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners={listeners},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners={advertised}",
        "controller.listener.names=CONTROLLER",
        f"listener.security.protocol.map={protocols}",
        "inter.broker.listener.name=PLAINTEXT",
        *extra,
        f"log.dirs={data_dir}",
        "num.partitions=6",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=6",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=6",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "num.network.threads=2",
        "num.io.threads=4",
        "log.retention.hours=24",
        "log.segment.bytes=67108864",
        "",
    ])


def log4j2_properties(log_file: Path) -> str:
    return "\n".join([
        "status = warn",
        "appender.file.type = File",
        "appender.file.name = FILE",
        f"appender.file.fileName = {log_file}",
        "appender.file.layout.type = PatternLayout",
        "appender.file.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.file.ref = FILE",
        "logger.kafka.name = kafka",
        "logger.kafka.level = INFO",
        "logger.apache.name = org.apache.kafka",
        "logger.apache.level = WARN",
        "",
    ])
