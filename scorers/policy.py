"""Policy: the decision settings a worker can change without a restart, versioned.

A policy file (JSON, `scorers/artifacts/policy.json` is the shipped default) holds:

- `version`: carried by every score answered under it (`Score.policy_version`);
- `thresholds`: review/block thresholds by tier name (`tiers`) and by model version
  (`models`, wins over `tiers`); what it does not name keeps the answering tier's own
  (a model's manifest, the rules' `RULES_THRESHOLDS`). The cache tier serves the
  primary's scores, so it uses the primary's entry unless it has its own;
- `review_rules`: named conditions on the transaction that send a record to manual
  review whatever its score (action at least `review`, flagged, reason
  `policy_review:<name>`); all conditions of a rule must hold;
- `rules`: the rules tier's parameters (`scorers.rules.RulesParams`).

`parse_policy` validates everything (unknown keys, ranges) and raises `PolicyError`;
`PolicyFile.poll` re-reads the file only when its stat changed and its content hash
differs, so a watcher can call it often. `PolicyHolder` holds the current policy: one
reference, swapped whole. The ladder reads it once per batch and attaches that
snapshot to the batch (`attach` / `policy_of`), so a swap takes effect at a batch
boundary and a batch never mixes two policies. `BUILTIN` (no file) is today's
behaviour: manifest thresholds, `DEFAULT_RULES`, no review rules, version None.

No I/O here except reading the policy file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from scorers.models.manifest import Thresholds
from scorers.rules import DEFAULT_RULES, RULE_NAMES, RulesParams

if TYPE_CHECKING:
    from scorers.batch_view import BatchView
    from scorers.outcome import Outcomes
    from topics.schemas import Transaction

BoolArray = npt.NDArray[np.bool_]
REVIEW_REASON_PREFIX: Final = "policy_review:"
SCRATCH_KEY: Final = "policy"  # where the batch's snapshot lives in `BatchView.scratch`
THRESHOLD_ALIASES: Final[Mapping[str, str]] = MappingProxyType({"cache": "primary"})
MAX_REVIEW_RULES: Final = 32  # keeps a score's reasons bounded
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,47}$")
_EMPTY: Final[Mapping[str, Thresholds]] = MappingProxyType({})


class PolicyError(ValueError):
    """A policy file that cannot be used: unreadable, not JSON, or invalid."""


@dataclass(frozen=True, slots=True)
class ReviewRule:
    """Send to manual review when every condition that is set holds."""

    name: str
    amount_at_least: float | None = None
    merchant_categories: frozenset[str] | None = None
    is_international: bool | None = None
    channels: frozenset[str] | None = None
    account_age_days_below: float | None = None

    def mask(self, txs: Sequence[Transaction]) -> BoolArray:
        """Records the rule sends to review (a missing field never matches)."""
        hit = np.ones(len(txs), dtype=np.bool_)
        if self.amount_at_least is not None:
            limit = self.amount_at_least
            hit &= np.fromiter((t.amount is not None and t.amount >= limit for t in txs),
                               dtype=np.bool_, count=len(txs))
        if self.merchant_categories is not None:
            mccs = self.merchant_categories
            hit &= np.fromiter((t.merchant_category in mccs for t in txs), dtype=np.bool_,
                               count=len(txs))
        if self.is_international is not None:
            want = self.is_international
            hit &= np.fromiter((t.is_international is want for t in txs), dtype=np.bool_,
                               count=len(txs))
        if self.channels is not None:
            channels = self.channels
            hit &= np.fromiter((t.channel in channels for t in txs), dtype=np.bool_,
                               count=len(txs))
        if self.account_age_days_below is not None:
            days = self.account_age_days_below
            hit &= np.fromiter((t.account_age_days is not None and t.account_age_days < days
                                for t in txs), dtype=np.bool_, count=len(txs))
        return hit


@dataclass(frozen=True, slots=True)
class Policy:
    version: str | None = None  # None: no policy file (the built-in behaviour)
    tier_thresholds: Mapping[str, Thresholds] = field(default_factory=lambda: _EMPTY)
    model_thresholds: Mapping[str, Thresholds] = field(default_factory=lambda: _EMPTY)
    review_rules: tuple[ReviewRule, ...] = ()
    rules: RulesParams = DEFAULT_RULES

    def thresholds_for(self, tier: str, model_version: str, own: Thresholds) -> Thresholds:
        """The review/block thresholds for an answer of `tier` by `model_version`;
        `own` (the tier's) when the policy names neither. `min_confidence` stays the tier's."""
        t = (self.model_thresholds.get(model_version) or self.tier_thresholds.get(tier)
             or self.tier_thresholds.get(THRESHOLD_ALIASES.get(tier, "")))
        if t is None:
            return own
        return Thresholds(review=t.review, block=t.block, min_confidence=own.min_confidence)


BUILTIN: Final = Policy()
DEFAULT_POLICY_PATH: Final = Path(__file__).resolve().parent / "artifacts" / "policy.json"


# -- the batch's snapshot --------------------------------------------------------------------------
def attach(view: BatchView, policy: Policy) -> None:
    """Make `policy` the one every tier of this batch reads (`policy_of`)."""
    view.scratch[SCRATCH_KEY] = policy


def policy_of(view: BatchView) -> Policy:
    p = view.scratch.get(SCRATCH_KEY)
    return p if isinstance(p, Policy) else BUILTIN


def apply_review_rules(policy: Policy, txs: Sequence[Transaction], out: Outcomes) -> int:
    """Escalate the answered records a review rule matches; the number escalated.
    Records left to the safe default are already flagged and stay a constant."""
    if not policy.review_rules:
        return 0
    idx = np.flatnonzero(out.answered)
    if not idx.size:
        return 0
    sub = [txs[i] for i in idx.tolist()]
    escalated = np.zeros(out.n, dtype=np.bool_)
    for rule in policy.review_rules:
        hit = idx[rule.mask(sub)]
        if hit.size:
            out.escalate(hit, f"{REVIEW_REASON_PREFIX}{rule.name}")
            escalated[hit] = True
    return int(np.count_nonzero(escalated))


# -- parsing and validation ------------------------------------------------------------------------
_TOP_KEYS: Final = frozenset({"version", "description", "thresholds", "review_rules", "rules"})
_RULE_CONDITIONS: Final = frozenset({"amount_at_least", "merchant_categories", "is_international",
                                     "channels", "account_age_days_below"})
_RULES_KEYS: Final = frozenset({"version", "confidence", "high_amount", "very_high_amount",
                                "new_account_days", "high_risk_merchant_categories", "weights"})


def _obj(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _keys(obj: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown keys {unknown} (allowed: {sorted(allowed)})")


def _num(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise PolicyError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _strings(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}: expected a list of non-empty strings")
    return frozenset(value)


def _thresholds(value: object, where: str) -> Thresholds:
    obj = _obj(value, where)
    _keys(obj, frozenset({"review", "block"}), where)
    if set(obj) != {"review", "block"}:
        raise PolicyError(f"{where}: needs both review and block")
    review, block = _num(obj["review"], f"{where}.review"), _num(obj["block"], f"{where}.block")
    if not 0.0 <= review <= block <= 1.0:
        raise PolicyError(f"{where}: need 0 <= review <= block <= 1, got {review}, {block}")
    return Thresholds(review=review, block=block)


def _threshold_table(value: object, where: str) -> Mapping[str, Thresholds]:
    obj = _obj(value, where)
    return MappingProxyType({str(k): _thresholds(v, f"{where}.{k}") for k, v in obj.items()})


def _review_rule(value: object, where: str) -> ReviewRule:
    obj = _obj(value, where)
    _keys(obj, frozenset({"name", "when"}), where)
    name = obj.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise PolicyError(f"{where}.name: expected [a-z0-9_]{{1,48}}, got {name!r}")
    when = _obj(obj.get("when"), f"{where}.when")
    _keys(when, _RULE_CONDITIONS, f"{where}.when")
    if not when:
        raise PolicyError(f"{where}.when: a review rule needs at least one condition")
    intl = when.get("is_international")
    if intl is not None and not isinstance(intl, bool):
        raise PolicyError(f"{where}.when.is_international: expected true or false")

    def opt_num(key: str) -> float | None:
        return None if when.get(key) is None else _num(when[key], f"{where}.when.{key}")

    def opt_set(key: str) -> frozenset[str] | None:
        return None if when.get(key) is None else _strings(when[key], f"{where}.when.{key}")

    return ReviewRule(name, opt_num("amount_at_least"), opt_set("merchant_categories"), intl,
                      opt_set("channels"), opt_num("account_age_days_below"))


def _rules_params(value: object, where: str) -> RulesParams:
    obj = _obj(value, where)
    _keys(obj, _RULES_KEYS, where)
    kw: dict[str, Any] = {}
    for key in ("confidence", "high_amount", "very_high_amount", "new_account_days"):
        if key in obj:
            kw[key] = _num(obj[key], f"{where}.{key}")
    if "version" in obj:
        if not isinstance(obj["version"], str):
            raise PolicyError(f"{where}.version: expected a string")
        kw["version"] = obj["version"]
    if "high_risk_merchant_categories" in obj:
        kw["high_risk_merchant_categories"] = _strings(obj["high_risk_merchant_categories"],
                                                       f"{where}.high_risk_merchant_categories")
    if "weights" in obj:
        weights = _obj(obj["weights"], f"{where}.weights")
        _keys(weights, frozenset(RULE_NAMES), f"{where}.weights")
        merged = dict(DEFAULT_RULES.weights)
        merged.update({k: _num(w, f"{where}.weights.{k}") for k, w in weights.items()})
        kw["weights"] = MappingProxyType(merged)
    try:
        return RulesParams(**kw)
    except ValueError as exc:
        raise PolicyError(f"{where}: {exc}") from exc


def parse_policy(data: object) -> Policy:
    """A validated `Policy` from the file's decoded JSON; `PolicyError` names what is wrong."""
    obj = _obj(data, "policy")
    _keys(obj, _TOP_KEYS, "policy")
    version = obj.get("version")
    if not isinstance(version, str) or not 0 < len(version) <= 64 or not version.isprintable():
        raise PolicyError(f"policy.version: expected a non-empty string, got {version!r}")
    th = _obj(obj.get("thresholds", {}), "policy.thresholds")
    _keys(th, frozenset({"tiers", "models"}), "policy.thresholds")
    raw_rules = obj.get("review_rules", [])
    if not isinstance(raw_rules, list) or len(raw_rules) > MAX_REVIEW_RULES:
        raise PolicyError(f"policy.review_rules: expected a list of at most {MAX_REVIEW_RULES}")
    review = tuple(_review_rule(r, f"policy.review_rules[{i}]") for i, r in enumerate(raw_rules))
    names = [r.name for r in review]
    if len(set(names)) != len(names):
        raise PolicyError(f"policy.review_rules: duplicate names in {names}")
    return Policy(version=version,
                  tier_thresholds=_threshold_table(th.get("tiers", {}), "policy.thresholds.tiers"),
                  model_thresholds=_threshold_table(th.get("models", {}),
                                                    "policy.thresholds.models"),
                  review_rules=review,
                  rules=_rules_params(obj.get("rules", {}), "policy.rules"))


def parse_policy_bytes(raw: bytes) -> Policy:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise PolicyError(f"not valid JSON: {exc}") from exc
    return parse_policy(data)


def load_policy(path: Path | str) -> Policy:
    """Read and validate a policy file (`PolicyError` when it cannot be used)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read {path}: {exc}") from exc
    return parse_policy_bytes(raw)


# -- holding and reloading -------------------------------------------------------------------------
class PolicyHolder:
    """The current policy: one reference, replaced whole (`swap`), read once per batch."""

    def __init__(self, policy: Policy = BUILTIN) -> None:
        self._policy = policy

    @property
    def current(self) -> Policy:
        return self._policy

    def swap(self, policy: Policy) -> Policy:
        """Install `policy`; the previous one."""
        old, self._policy = self._policy, policy
        return old


class PolicyFile:
    """A policy file watched by polling: `poll` stats it (cheap) and reads, hashes and
    parses it only when the stat changed; the same content (a touch, a rewrite of equal
    bytes) is not reloaded, and an invalid content is refused once, not at every poll."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._stat: tuple[int, int, int] | None = None
        self._sha256: str | None = None

    def load(self) -> Policy:
        """The file's policy now (the first load; `PolicyError` when unusable)."""
        self._stat = self._stat_now()
        raw = self._read()
        policy = parse_policy_bytes(raw)
        self._sha256 = hashlib.sha256(raw).hexdigest()
        return policy

    def poll(self) -> Policy | None:
        """The new policy when the file's content changed and is valid; None when it did
        not change; `PolicyError` when it changed to something unusable (or vanished)."""
        stat = self._stat_now()
        if stat == self._stat:
            return None
        self._stat = stat
        raw = self._read()
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self._sha256:
            return None
        self._sha256 = digest  # refused content is not re-parsed until it changes again
        return parse_policy_bytes(raw)

    def _stat_now(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise PolicyError(f"cannot read {self.path}: {exc}") from exc


class PolicyListener:
    """Reload outcomes, for metrics; the defaults do nothing (like `LadderListener`)."""

    def on_policy_applied(self, version: str | None) -> None:
        """A policy is in force (at start and after each applied reload)."""

    def on_policy_refused(self, reason: str) -> None:
        """A changed policy file was refused; the previous policy stays."""
