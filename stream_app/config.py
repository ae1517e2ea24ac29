"""rung's configuration: pydantic-settings, `RUNG_` prefix, nested sections.

Every key can come from the environment (`RUNG_KAFKA__BOOTSTRAP_SERVERS`,
`RUNG_BATCH__DEADLINE_S`, ...) or from CLI options that override it. Settings
are frozen; `Settings.redacted()` is what the one start-up log line prints.
librdkafka keys pass through `kafka.extra` after validation, and secrets in
them (`sasl.password`, `ssl.key.password`, ...) are masked in that log line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scorers.config import DEFAULT_BREAKERS, BreakerConfig, CacheConfig, LadderConfig
from topics.catalog import TopicNames

_LIBRDKAFKA_KEY = re.compile(r"^[a-z][a-z0-9]*(\.[a-z0-9_]+)*$")
# Keys rung sets itself: passing them through would break its delivery guarantees.
_RESERVED_KEYS = frozenset({
    "bootstrap.servers", "group.id", "enable.auto.commit", "isolation.level",
    "transactional.id", "enable.idempotence", "on_delivery", "error_cb", "stats_cb",
})
_SECRET_HINTS = ("password", "secret", "sasl.jaas.config", "ssl.key.pem", "token")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def default_instance_id(slot: int | None = None, env: Mapping[str, str] | None = None,
                        hostname: str | None = None, pid: int | None = None) -> str:
    """The worker's instance id when `RUNG_KAFKA__INSTANCE_ID` is not set.

    It names the transactional id, and a successor with the *same* transactional id
    fences its predecessor: `init_transactions` aborts the predecessor's open
    transaction at once, instead of read_committed consumers waiting for the
    transaction timeout. So it should survive a restart, yet two live workers must
    never share it. In order:
    1. `RUNG_KAFKA__INSTANCE_SLOT` set: `<POD_NAME or hostname>-<slot>` (stable; the
       operator promises one live worker per slot on that pod or host);
    2. `POD_NAME` set (Kubernetes downward API, one worker per pod; a StatefulSet's
       pod names `rung-worker-3` survive rescheduling): the pod name;
    3. otherwise `<hostname>-<pid>`: unique among concurrent workers on one machine
       (the local stack, tests and the demo start several), but new at every restart.
    """
    env = os.environ if env is None else env
    pod = env.get("POD_NAME", "").strip()
    base = pod or (hostname if hostname is not None else socket.gethostname())
    if slot is not None:
        return f"{base}-{slot}"
    if pod:
        return pod
    return f"{base}-{os.getpid() if pid is None else pid}"


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "rung-scorer"
    delivery: Literal["exactly_once", "at_least_once"] = "exactly_once"
    transactional_id: str | None = Field(
        default=None,
        description="Stable per worker instance; defaults to <group_id>-<instance_id>.")
    instance_id: str = Field(default="", description="see default_instance_id(); empty = derive")
    instance_slot: int | None = Field(
        default=None, ge=0, description="opt into <POD_NAME or hostname>-<slot> as the instance id")
    transaction_timeout_s: float = 60.0
    session_timeout_s: float = 10.0
    max_poll_interval_s: float = 60.0
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    extra: dict[str, str] = Field(default_factory=dict,
                                  description="librdkafka keys passed through as they are")

    @model_validator(mode="before")
    @classmethod
    def _derive_instance_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("instance_id"):
            slot = data.get("instance_slot")
            data = {**data, "instance_id": default_instance_id(
                None if slot in (None, "") else int(slot))}
        return data

    @field_validator("extra")
    @classmethod
    def _check_extra(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _LIBRDKAFKA_KEY.match(key):
                raise ValueError(f"not a librdkafka configuration key: {key!r}")
            if key in _RESERVED_KEYS:
                raise ValueError(f"{key!r} is managed by rung and cannot be overridden")
        return value

    def effective_transactional_id(self) -> str:
        return self.transactional_id or f"{self.group_id}-{self.instance_id}"

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings common to rung's consumers, producers and admin."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers,
                                "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        conf.update(self.extra)
        return conf


class TopicSettings(_Section):
    prefix: str = "rung"
    partitions: int = Field(default=6, ge=1)

    def names(self) -> TopicNames:
        return TopicNames.with_prefix(self.prefix)


class RedisSettings(_Section):
    url: SecretStr | None = Field(default=None, description="redis://[:password@]host:port/db")
    password: SecretStr | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    socket_timeout_s: float = 0.04  # = the feature fetch timeout (docs/budgets.md)
    tcp_quick_ack: bool = Field(
        default=True, description="acknowledge feature-store replies at once (Linux "
        "TCP_QUICKACK): a large reply no longer stalls 40 ms on a delayed ACK (docs/budgets.md)")
    enabled: bool = True


class BatchSettings(_Section):
    max_records: int = Field(default=512, ge=1, le=100_000)
    linger_s: float = Field(default=0.01, ge=0.0)
    deadline_s: float = Field(default=0.1, gt=0.0,
                              description="per-batch scoring budget (docs/budgets.md)")
    max_in_flight_records: int = Field(default=20_000, ge=1)
    poll_timeout_s: float = 0.05
    event_budget_s: float | None = Field(
        default=None, gt=0.0,
        description="end-to-end budget from a record's Kafka timestamp; a record past it "
                    "is answered by the fallback/rules at once (unset: off)")


_LADDER = LadderConfig()
_CACHE = CacheConfig()
_BREAKER = BreakerConfig()


class BreakerSettings(_Section):
    """Overrides for one named breaker; an unset field keeps that breaker's default
    (`scorers.config.DEFAULT_BREAKERS`). E.g. RUNG_LADDER__BREAKERS__PRIMARY__OPEN_WAIT_S=5."""

    window_type: Literal["count", "time"] | None = None
    window_size: int | None = Field(default=None, ge=1)
    minimum_calls: int | None = Field(default=None, ge=1)
    failure_rate_threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    slow_call_rate_threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    slow_call_duration_s: float | None = Field(default=None, gt=0.0)
    half_open_trial_calls: int | None = Field(default=None, ge=1)
    open_wait_s: float | None = Field(default=None, gt=0.0)
    open_wait_multiplier: float | None = Field(default=None, ge=1.0)
    max_open_wait_s: float | None = Field(default=None, gt=0.0)

    def over(self, base: BreakerConfig) -> BreakerConfig:
        changes = {k: v for k, v in self.model_dump().items() if v is not None}
        return dataclasses.replace(base, **changes)


class LadderSettings(_Section):
    """Budgets inside the per-batch deadline; defaults from scorers.config."""

    feature_timeout_s: float = Field(default=_LADDER.feature_timeout_s, gt=0.0,
                                     description="one feature fetch")
    feature_update_timeout_s: float = Field(default=_LADDER.feature_update_timeout_s, gt=0.0)
    fallback_reserve_s: float = Field(default=_LADDER.fallback_reserve_s, ge=0.0,
                                      description="budget kept for fallback and rules")
    primary_bulkhead_threads: int = Field(default=_LADDER.primary_bulkhead_threads, ge=1,
                                          description="primary executor size")
    max_poison_rows: int = Field(default=_LADDER.max_poison_rows, ge=0,
                                 description="poison rows one batch may isolate by bisection")
    integrity_check_interval_s: float = Field(
        default=_LADDER.integrity_check_interval_s, ge=0.0,
        description="seconds between checks of the models' in-memory weights; 0 = off")
    cache_enabled: bool = Field(default=_CACHE.enabled,
                                description="prediction cache on the live path (see scorers/cache.py)")
    cache_timeout_s: float = Field(default=_CACHE.timeout_s, gt=0.0,
                                   description="one cache round trip (its socket timeout)")
    cache_soft_ttl_s: float = Field(default=_CACHE.soft_ttl_s, gt=0.0)
    cache_hard_ttl_s: float = Field(default=_CACHE.hard_ttl_s, gt=0.0)
    cache_max_writes_per_batch: int = Field(default=_CACHE.max_writes_per_batch, ge=0)
    breakers: dict[str, BreakerSettings] = Field(
        default_factory=dict, description="per-breaker overrides, by name")

    def cache_config(self) -> CacheConfig:
        return CacheConfig(enabled=self.cache_enabled, timeout_s=self.cache_timeout_s,
                           soft_ttl_s=self.cache_soft_ttl_s, hard_ttl_s=self.cache_hard_ttl_s,
                           max_writes_per_batch=self.cache_max_writes_per_batch)

    def ladder_config(self, device: str = _LADDER.device) -> LadderConfig:
        return LadderConfig(device=device, fallback_reserve_s=self.fallback_reserve_s,
                            feature_timeout_s=self.feature_timeout_s,
                            feature_update_timeout_s=self.feature_update_timeout_s,
                            primary_bulkhead_threads=self.primary_bulkhead_threads,
                            primary_bulkhead_max_outstanding=self.primary_bulkhead_threads,
                            max_poison_rows=self.max_poison_rows, cache=self.cache_config(),
                            integrity_check_interval_s=self.integrity_check_interval_s)

    def breaker_configs(self) -> dict[str, BreakerConfig]:
        """Every named breaker's config: built-in defaults with the overrides on top."""
        out = dict(DEFAULT_BREAKERS)
        for name, override in self.breakers.items():
            out[name] = override.over(out.get(name, _BREAKER))
        return out


class ModelSettings(_Section):
    primary_dir: Path | None = None
    fallback_dir: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(default=1, ge=1,
                               description="torch intra-op and numpy BLAS threads, process-wide, set once")
    registry_dir: Path | None = Field(
        default=None, description="model registry (versions/ + promoted.json): the primary "
                                  "is its promoted version, hot-swapped; unset: primary_dir")
    registry_poll_s: float = Field(default=2.0, gt=0,
                                   description="seconds between reads of promoted.json")

    @model_validator(mode="after")
    def _paths_exist(self) -> ModelSettings:
        for p in (self.primary_dir, self.fallback_dir):
            if p is not None and not Path(p).exists():
                raise ValueError(f"model directory does not exist: {p}")
        return self


class ShadowSettings(_Section):
    """A shadow challenger and drift, after commit, off the live path (docs/shadow.md)."""

    model_dir: Path | None = Field(default=None, description="the challenger; unset: no shadow")
    sample: float = Field(default=1.0, ge=0.0, le=1.0,
                          description="share of committed transactions (by id hash) the shadow "
                                      "takes: the challenger scores them, drift bins them")
    queue_batches: int = Field(default=8, ge=1,
                               description="committed batches waiting; past it work is dropped")
    executor: Literal["process", "thread"] = Field(
        default="process",
        description="the whole shadow in a child process at idle priority, or a worker thread")
    pause_in_backlog: bool = Field(
        default=True, description="drop shadow work (reason backlog) while the worker drains a "
                                  "backlog (its last 2 batches full), so it uses spare capacity only")
    drift: bool = Field(default=True, description="PSI against the models' reference.json")
    drift_interval_s: float = Field(default=30.0, gt=0.0, description="PSI export period")

    @model_validator(mode="after")
    def _dir_exists(self) -> ShadowSettings:
        if self.model_dir is not None and not Path(self.model_dir).exists():
            raise ValueError(f"shadow model directory does not exist: {self.model_dir}")
        return self


class ProcessSettings(_Section):
    """How the worker's threads share one interpreter (stream_app/live/gil.py)."""

    gil_switch_interval_s: float = Field(
        default=0.0005, gt=0.0, le=0.1,
        description="longest wait of the scoring loop for the GIL held by another thread "
                    "(CPython's default 0.005 stretches feature fetches beside busy threads)")
    label_feed_busy_share: float = Field(
        default=0.25, gt=0.0, le=1.0,
        description="the label feed's CPU time as a share of its wall time while it works "
                    "off a backlog (it pauses between polls); 1: no pacing")


class TracingSettings(_Section):
    """OpenTelemetry traces through Kafka headers (`stream_app.tracing`, docs/tracing.md);
    needs the `otel` extra (`pip install 'rung[otel]'`) when enabled."""

    enabled: bool = Field(default=False, description="off: no span, no header read")
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces; "
                                  "unset: spans are made and propagated but not exported")
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0,
                                description="share of traces (by trace id) rung records spans in")
    max_links: int = Field(default=128, ge=0, le=10_000,
                           description="links from a batch span to its records' contexts")
    service_name: str = "rung"


class FormatSettings(_Section):
    """Value format of the transactions and scores topics (`stream_app.kafka.serde`,
    docs/formats.md): JSON, or Avro/Protobuf with their schemas in a schema registry
    that speaks the Confluent API. Dead letters are JSON whatever the format."""

    kind: Literal["json", "avro", "protobuf"] = "json"
    registry_url: str | None = Field(
        default=None, description="the registry's Confluent-compatible base URL, e.g. "
                                  "http://registry:8080/apis/ccompat/v7 (Apicurio)")
    registry_username: str | None = None
    registry_password: SecretStr | None = None
    registry_timeout_s: float = Field(default=5.0, gt=0.0)
    auto_register: bool = Field(
        default=True, description="register rung's schemas with BACKWARD compatibility at "
                                  "start; off: they must be registered already")

    @model_validator(mode="after")
    def _needs_registry(self) -> FormatSettings:
        if self.kind != "json" and not self.registry_url:
            raise ValueError(f"format.kind={self.kind} needs format.registry_url")
        return self


class MetricsSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class AdminSettings(_Section):
    faults_enabled: bool = Field(default=False, description="allow run-time fault injection")


class LogSettings(_Section):
    format: Literal["json", "console"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


class PolicySettings(_Section):
    """The run-time policy file (scorers/policy.py, docs/policy.md): thresholds, review
    rules, the rules tier's parameters, reloaded without a restart."""

    path: Path | None = Field(default=None, description="policy JSON; unset: the built-in "
                              "behaviour (manifest thresholds, default rules, no version)")
    poll_interval_s: float = Field(default=1.0, gt=0.0,
                                   description="seconds between stats of the policy file")

    @model_validator(mode="after")
    def _path_exists(self) -> PolicySettings:
        if self.path is not None and not Path(self.path).is_file():
            raise ValueError(f"policy file does not exist: {self.path}")
        return self


class ExplainSettings(_Section):
    """Feature contributions in the reasons of reviewed scores (scorers/explain.py)."""

    enabled: bool = True
    top_k: int = Field(default=4, ge=1, le=8, description="contributions per record")
    all_records: bool = Field(default=False, description="explain every model answer, not "
                              "only the ones routed to manual review")
    method: Literal["gxi", "ig"] = Field(default="ig", description="integrated gradients "
                                         "with ig_steps steps, or gradient x input (cheaper, "
                                         "less faithful: docs/policy.md)")
    ig_steps: int = Field(default=4, ge=1, le=64)
    batch_budget_s: float | None = Field(default=0.01, gt=0.0, description="at most this "
                                         "much of a batch's time on explanations (None: up to "
                                         "the deadline); the rest get <tier>_explain_budget")
    in_replay: bool = Field(default=False, description="explain in replays too: a backfill "
                            "that only needs decisions scores ~2x faster without (docs/replay.md)")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNG_", env_nested_delimiter="__",
                                      frozen=True, extra="forbid")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)  # instance id: per process
    topics: TopicSettings = TopicSettings()
    redis: RedisSettings = RedisSettings()
    batch: BatchSettings = BatchSettings()
    ladder: LadderSettings = LadderSettings()
    models: ModelSettings = ModelSettings()
    shadow: ShadowSettings = ShadowSettings()
    tracing: TracingSettings = TracingSettings()
    format: FormatSettings = FormatSettings()
    metrics: MetricsSettings = MetricsSettings()
    admin: AdminSettings = AdminSettings()
    log: LogSettings = LogSettings()
    policy: PolicySettings = PolicySettings()
    explain: ExplainSettings = ExplainSettings()
    process: ProcessSettings = ProcessSettings()

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with every secret masked, for the start-up log line."""
        data = self.model_dump(mode="json")
        data["kafka"]["extra"] = {k: ("***" if any(h in k for h in _SECRET_HINTS) else v)
                                  for k, v in self.kafka.extra.items()}
        if self.kafka.sasl_password is not None:
            data["kafka"]["sasl_password"] = "***"
        if self.redis.url is not None:
            data["redis"]["url"] = _mask_url(self.redis.url.get_secret_value())
        if self.redis.password is not None:
            data["redis"]["password"] = "***"
        return data


def _mask_url(url: str) -> str:
    return re.sub(r"//([^@/]*)@", "//***@", url)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with non-None overrides (from the CLI) on top."""
    base = Settings()
    if not overrides:
        return base
    data = base.model_dump()
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition("__")
        data[section][key] = value
    return Settings.model_validate(data)
