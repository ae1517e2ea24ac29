"""Prometheus metrics of the shadow challenger and drift, on a `Metrics`' registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ShadowMetrics:
    """The shadow challenger and drift (`stream_app.live.shadow`), on a `Metrics`' registry.

    Flip rate per version pair = flips / `rung_shadow_compared_total`; the correlation is
    Pearson's over the last `stream_app.live.shadow.CORRELATION_WINDOW` compared records."""

    def __init__(self, registry: CollectorRegistry) -> None:
        pair = ["champion_version", "challenger_version"]
        self._compared = Counter("rung_shadow_compared_total",
                                 "Records scored by both the live ladder and the challenger.",
                                 pair, registry=registry)
        self._flips = Counter("rung_shadow_decision_flips_total",
                              "Decisions the challenger would change, by direction.",
                              [*pair, "from_action", "to_action"], registry=registry)
        self._corr = Gauge("rung_shadow_score_correlation",
                           "Pearson correlation of live and challenger scores (rolling window).",
                           pair, registry=registry)
        self._dropped = Counter("rung_shadow_dropped_records_total",
                                "Records the shadow did not score or publish, by reason.",
                                ["reason"], registry=registry)
        self._psi = Gauge("rung_drift_psi",
                          "Population stability index against the training reference.",
                          ["feature", "model_version"], registry=registry)

    def compared(self, champion: str, challenger: str, n: int) -> None:
        self._compared.labels(champion, challenger).inc(n)

    def flipped(self, champion: str, challenger: str, from_action: str, to_action: str,
                n: int) -> None:
        self._flips.labels(champion, challenger, from_action, to_action).inc(n)

    def set_correlation(self, champion: str, challenger: str, value: float) -> None:
        self._corr.labels(champion, challenger).set(value)

    def dropped(self, reason: str, n: int) -> None:
        self._dropped.labels(reason).inc(n)

    def set_psi(self, feature: str, model_version: str, value: float) -> None:
        self._psi.labels(feature, model_version).set(value)
