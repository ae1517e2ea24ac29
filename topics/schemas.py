"""Event and score schemas: the values that cross rung's topics."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final, Literal

SCHEMA_VERSION: Final = 1


class Tier(StrEnum):
    """The names of the built-in rungs of the ladder, best first.

    `Score.tier` is a plain string: the name of whichever tier answered, so a ladder
    built with a tier of its own (a shadow model, an enrichment) needs no change
    here. Each built-in tier module takes its name from this enum: that is the one
    place a built-in tier is named.
    """

    CACHE = "cache"
    PRIMARY = "primary"
    FALLBACK = "fallback"
    RULES = "rules"
    DEFAULT = "default"


class Action(str, Enum):
    """What the payment system should do with the transaction."""

    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"


Channel = Literal["pos", "ecom", "mobile", "atm"]
CHANNELS: Final[tuple[str, ...]] = ("pos", "ecom", "mobile", "atm")

# ISO 18245 merchant category codes the simulator draws from. The high-risk set
# is what the rules tier and the simulator's fraud scenarios agree on.
MERCHANT_CATEGORIES: Final[tuple[str, ...]] = (
    "5411",  # grocery stores
    "5812",  # restaurants
    "5541",  # service stations
    "5311",  # department stores
    "5999",  # miscellaneous retail
    "4111",  # commuter transport
    "5732",  # electronics
    "5944",  # jewelry
    "7995",  # gambling
    "6051",  # quasi-cash, crypto
    "4829",  # money transfer
    "5816",  # digital goods, games
)
HIGH_RISK_MERCHANT_CATEGORIES: Final[frozenset[str]] = frozenset({"7995", "6051", "4829", "5816"})


@dataclass(frozen=True, slots=True)
class Transaction:
    """A card transaction event as rung reads it from the transactions topic.

    Decoding is lenient: every field but `transaction_id` may be None when the
    producer left it out or sent a value of the wrong type or out of range.
    `problems` says, per field, what was wrong; the scoring core sends such a
    record to the highest tier that can still score it and keeps the reasons.
    """

    transaction_id: str
    event_time_s: float | None
    customer_id: str | None
    terminal_id: str | None
    amount: float | None
    currency: str | None
    merchant_category: str | None
    is_international: bool | None
    has_international_history: bool | None
    account_age_days: int | None
    channel: str | None
    problems: tuple[str, ...] = ()

    @property
    def is_complete(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class Score:
    """One answer for one transaction: exactly one per consumed event."""

    transaction_id: str
    score: float
    action: Action
    flag_for_review: bool
    tier: str  # the answering tier's name (a `Tier` member for the built-in ones)
    model_version: str
    confidence: float
    reasons: tuple[str, ...]
    latency_s: float
    scored_at_s: float
    replay_id: str | None = None
    policy_version: str | None = None  # the policy in force (scorers.policy); None: none


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A consumed record that could not be turned into a score.

    The original bytes are kept whole up to a cap that keeps the dead-letter record
    well inside the broker's default message size; past it they are truncated and
    `original_value_length` and `original_value_sha256` still identify the record.
    """

    error: str
    source_topic: str
    source_partition: int
    source_offset: int
    original_key: bytes | None
    original_value: bytes | None
    original_value_length: int | None = None  # set on decode: the length before any cut
    original_value_sha256: str | None = None
    truncated: bool = False


class LabelKind(StrEnum):
    """What a label says about a transaction."""

    FRAUD = "fraud"  # confirmed fraud (analyst decision, customer report)
    GENUINE = "genuine"  # confirmed genuine
    CHARGEBACK = "chargeback"  # the issuer charged the payment back: fraud


@dataclass(frozen=True, slots=True)
class Label:
    """A delayed ground-truth label, from the `<prefix>.labels` topic (key: transaction id).

    `labelled_at_s` is when the label became known (the record's time); `terminal_id`
    and `event_time_s` repeat the labelled transaction's, so the feature store can
    attribute a fraud to its terminal and day without a lookup (producers of labels
    usually have them; a label without them can still be joined with scores).
    """

    transaction_id: str
    kind: LabelKind
    labelled_at_s: float
    terminal_id: str | None = None
    event_time_s: float | None = None

    @property
    def is_fraud(self) -> bool:
        return self.kind is not LabelKind.GENUINE
