"""Topic names and topic configurations.

Names come from a prefix so that tests and replays can run side by side on one
broker without touching each other's topics.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TopicNames:
    transactions: str = "rung.transactions"
    scores: str = "rung.scores"
    review: str = "rung.manual-review"
    dead_letter: str = "rung.dead-letter"
    labels: str = "rung.labels"  # delayed ground truth, keyed by transaction id
    scores_shadow: str = "rung.scores.shadow"  # a shadow challenger's answers (both versions)

    @classmethod
    def with_prefix(cls, prefix: str) -> TopicNames:
        return cls(
            transactions=f"{prefix}.transactions",
            scores=f"{prefix}.scores",
            review=f"{prefix}.manual-review",
            dead_letter=f"{prefix}.dead-letter",
            labels=f"{prefix}.labels",
            scores_shadow=f"{prefix}.scores.shadow",
        )

    def all(self) -> tuple[str, ...]:
        return (self.transactions, self.scores, self.review, self.dead_letter, self.labels,
                self.scores_shadow)


# Scores are keyed by transaction id; a week of retention covers replays that
# compare against live output. Dead letters are kept longer for forensics.
_RETAIN_7D = str(7 * 24 * 3600 * 1000)
_RETAIN_30D = str(30 * 24 * 3600 * 1000)


def topic_specs(names: TopicNames, partitions: int = 6) -> list[TopicSpec]:
    return [
        TopicSpec(names.transactions, partitions, {"retention.ms": _RETAIN_7D}),
        TopicSpec(names.scores, partitions, {"retention.ms": _RETAIN_7D,
                                             "compression.type": "lz4"}),
        TopicSpec(names.review, partitions, {"retention.ms": _RETAIN_30D}),
        TopicSpec(names.dead_letter, 1, {"retention.ms": _RETAIN_30D}),
        TopicSpec(names.labels, partitions, {"retention.ms": _RETAIN_30D}),
        TopicSpec(names.scores_shadow, partitions, {"retention.ms": _RETAIN_7D,
                                                    "compression.type": "lz4"}),
    ]
