"""The policy: parsing and validation, thresholds, review rules, the rules tier's
parameters, the shipped default (today's behaviour exactly), one policy per batch."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ladder_fakes import FnModel, build, make_tx, primary_model

from scorers.clock import FakeClock
from scorers.deadline import Deadline
from scorers.models.manifest import Thresholds
from scorers.policy import (
    BUILTIN,
    DEFAULT_POLICY_PATH,
    Policy,
    PolicyError,
    PolicyFile,
    PolicyHolder,
    load_policy,
    parse_policy,
)
from scorers.rules import DEFAULT_RULES, RULES_THRESHOLDS
from topics.schemas import Action, Score, Tier, Transaction


def mixed_batch() -> list[Transaction]:
    """Amounts from small to very high, international, risky merchants, new accounts, a
    record without customer (no primary), one without amount (default)."""
    txs = [make_tx(i, amount=float(a)) for i, a in enumerate(
        [5, 40, 300, 480, 520, 700, 999, 1000, 2500, 5000, 9000])]
    txs += [make_tx(20, is_international=True, has_international_history=False, amount=1200.0),
            make_tx(21, merchant_category="7995", channel="ecom", amount=60.0),
            make_tx(22, account_age_days=3, channel="atm", is_international=True, amount=1500.0),
            make_tx(23, customer_id=None, problems=("customer_id",), amount=800.0),
            make_tx(24, amount=None, problems=("amount",))]
    return txs


def policy(**extra: Any) -> Policy:
    return parse_policy({"version": "test-1", **extra})


def score(ladder: Any, clock: FakeClock, txs: list[Transaction]) -> list[Score]:
    scores: list[Score] = ladder.score_batch(txs, Deadline.after(clock, 0.05))
    return scores


def same_but_version(a: list[Score], b: list[Score]) -> bool:
    strip = [dataclasses.replace(s, policy_version=None, latency_s=0.0) for s in a]
    return strip == [dataclasses.replace(s, latency_s=0.0) for s in b]


# -- the shipped default -----------------------------------------------------------------------------
def test_shipped_default_policy_names_todays_parameters() -> None:
    p = load_policy(DEFAULT_POLICY_PATH)
    assert p.version == "default-1"
    assert p.rules == DEFAULT_RULES and dict(p.rules.weights) == dict(DEFAULT_RULES.weights)
    assert p.thresholds_for(Tier.RULES, "rules-v1", RULES_THRESHOLDS) == RULES_THRESHOLDS
    own = Thresholds(review=0.2, block=0.7, min_confidence=0.1)
    assert p.thresholds_for(Tier.PRIMARY, "p-1", own) is own  # the manifest's
    assert p.review_rules == ()


@pytest.mark.parametrize("models", ["all", "rules_only"])
def test_default_policy_file_reproduces_the_builtin_scores_exactly(models: str) -> None:
    kw: dict[str, Any] = {} if models == "all" else {"primary": None, "fallback": None}
    clock = FakeClock()
    builtin = score(build(clock, **kw), clock, mixed_batch())
    holder = PolicyHolder(load_policy(DEFAULT_POLICY_PATH))
    shipped = score(build(clock, policy=holder, **kw), clock, mixed_batch())
    assert {s.policy_version for s in builtin} == {None}
    assert {s.policy_version for s in shipped} == {"default-1"}
    assert same_but_version(shipped, builtin)
    tiers = {s.tier for s in builtin}
    assert tiers >= ({Tier.PRIMARY, Tier.FALLBACK, Tier.DEFAULT} if models == "all"
                     else {Tier.RULES, Tier.DEFAULT})


# -- thresholds --------------------------------------------------------------------------------------
def test_thresholds_by_model_version_win_over_tier_and_cache_uses_the_primary() -> None:
    p = policy(thresholds={"tiers": {"primary": {"review": 0.1, "block": 0.2}},
                           "models": {"p-2": {"review": 0.3, "block": 0.4}}})
    own = Thresholds(review=0.5, block=0.9, min_confidence=0.25)
    assert p.thresholds_for("primary", "p-1", own) == Thresholds(0.1, 0.2, 0.25)
    assert p.thresholds_for("primary", "p-2", own) == Thresholds(0.3, 0.4, 0.25)
    assert p.thresholds_for("cache", "p-1", own) == Thresholds(0.1, 0.2, 0.25)
    assert p.thresholds_for("fallback", "f-1", own) is own


def test_policy_thresholds_set_the_actions_of_the_ladder() -> None:
    clock = FakeClock()
    txs = [make_tx(i, amount=float(a)) for i, a in enumerate([10, 300, 460, 520, 800])]
    base = score(build(clock), clock, txs)
    assert [s.action for s in base] == [Action.ALLOW] * 3 + [Action.REVIEW, Action.BLOCK]
    holder = PolicyHolder(policy(thresholds={"models": {"p-1": {"review": 0.01, "block": 0.6}}}))
    scores = score(build(clock, policy=holder), clock, txs)
    assert [s.score for s in scores] == [s.score for s in base]
    assert [s.action for s in scores] == [Action.ALLOW, Action.REVIEW, Action.REVIEW,
                                          Action.REVIEW, Action.BLOCK]
    assert [s.flag_for_review for s in scores] == [False, True, True, True, False]
    assert {s.policy_version for s in scores} == {"test-1"}


# -- review rules ------------------------------------------------------------------------------------
def test_review_rules_escalate_to_review_never_down_and_say_why() -> None:
    holder = PolicyHolder(policy(review_rules=[
        {"name": "large_amount", "when": {"amount_at_least": 450}},
        {"name": "risky_abroad", "when": {"merchant_categories": ["7995"],
                                          "is_international": True}}]))
    txs = [make_tx(0, amount=20.0), make_tx(1, amount=460.0), make_tx(2, amount=2000.0),
           make_tx(3, amount=30.0, merchant_category="7995", is_international=True),
           make_tx(4, amount=30.0, merchant_category="7995"),
           make_tx(5, amount=None, problems=("amount",))]
    clock = FakeClock()
    scores = score(build(clock, policy=holder), clock, txs)
    acts = [(s.action, s.flag_for_review) for s in scores]
    assert acts[0] == (Action.ALLOW, False) and acts[4] == (Action.ALLOW, False)
    assert acts[1] == (Action.REVIEW, True) and acts[3] == (Action.REVIEW, True)
    assert acts[2][0] is Action.BLOCK  # a block stays a block
    assert "policy_review:large_amount" in scores[1].reasons
    assert "policy_review:large_amount" in scores[2].reasons
    assert "policy_review:risky_abroad" in scores[3].reasons
    assert not any(r.startswith("policy_review:") for r in scores[0].reasons + scores[4].reasons)
    assert scores[5].tier == Tier.DEFAULT and scores[5].reasons[-1] == "default"  # a constant


def test_review_rule_on_missing_fields_never_matches() -> None:
    rule = policy(review_rules=[{"name": "young", "when": {"account_age_days_below": 30,
                                                           "channels": ["atm"]}}]).review_rules[0]
    txs = [make_tx(0, account_age_days=None, channel="atm"), make_tx(1, account_age_days=3,
                                                                     channel="atm"),
           make_tx(2, account_age_days=3, channel="pos")]
    assert rule.mask(txs).tolist() == [False, True, False]


# -- the rules tier's parameters --------------------------------------------------------------------
def test_rules_parameters_come_from_the_policy() -> None:
    txs = [make_tx(i, amount=float(a)) for i, a in enumerate([50, 150])]
    clock = FakeClock()
    base = score(build(clock, primary=None, fallback=None), clock, txs)
    assert all(s.tier == Tier.RULES and s.score == 0.0 for s in base)
    holder = PolicyHolder(policy(rules={"version": "rules-low", "high_amount": 100,
                                        "confidence": 0.2, "weights": {"high_amount": 0.4}}))
    scores = score(build(clock, primary=None, fallback=None, policy=holder), clock, txs)
    assert scores[0].score == 0.0 and scores[1].score == pytest.approx(0.4)
    assert scores[1].reasons[-1] == "rule:high_amount"
    assert scores[1].action is Action.REVIEW and scores[1].confidence == pytest.approx(0.2)
    assert {s.model_version for s in scores} == {"rules-low"}


# -- validation --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "names"), [
    ({"version": "v", "thresholds": {"tiers": {"primary": {"review": 0.9, "block": 0.5}}}},
     "thresholds.tiers.primary"),
    ({"version": "v", "thresholds": {"tiers": {"primary": {"review": 0.1}}}}, "review and block"),
    ({"version": "v", "threshold": {}}, "unknown keys ['threshold']"),
    ({"thresholds": {}}, "policy.version"),
    ({"version": ""}, "policy.version"),
    ({"version": "v", "review_rules": [{"name": "x", "when": {}}]}, "at least one condition"),
    ({"version": "v", "review_rules": [{"name": "x", "when": {"amount_over": 5}}]},
     "unknown keys ['amount_over']"),
    ({"version": "v", "review_rules": [{"name": "x", "when": {"amount_at_least": 1}},
                                       {"name": "x", "when": {"amount_at_least": 2}}]},
     "duplicate names"),
    ({"version": "v", "review_rules": [{"name": "Bad Name", "when": {"amount_at_least": 1}}]},
     "review_rules[0].name"),
    ({"version": "v", "rules": {"weights": {"made_up": 0.2}}}, "unknown keys ['made_up']"),
    ({"version": "v", "rules": {"weights": {"high_amount": 1.5}}}, "weight high_amount=1.5"),
    ({"version": "v", "rules": {"high_amount": 9000, "very_high_amount": 100}},
     "high_amount <= very_high_amount"),
    ({"version": "v", "rules": {"confidence": "high"}}, "policy.rules.confidence"),
    ({"version": "v", "thresholds": {"tiers": {"rules": {"review": True, "block": 1}}}},
     "finite number"),
    ([1, 2], "expected an object"),
    ({"version": "v", "review_rules": [{"name": f"r{i}", "when": {"amount_at_least": i}}
                                       for i in range(33)]}, "at most 32"),
])
def test_invalid_policies_are_refused_with_the_problem_named(data: object, names: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(data)
    assert names in str(info.value)


def test_unreadable_or_non_json_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PolicyError, match="not valid JSON"):
        load_policy(bad)


# -- reloading ---------------------------------------------------------------------------------------
def write(path: Path, data: object, mtime_ns: int) -> None:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_policy_file_reloads_on_change_only_and_refuses_bad_content_once(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    write(path, {"version": "v1"}, 1_000_000_000)
    f = PolicyFile(path)
    assert f.load().version == "v1"
    assert f.poll() is None  # unchanged stat: not even read
    write(path, {"version": "v1"}, 2_000_000_000)  # touched, same bytes
    assert f.poll() is None
    write(path, {"version": "v2"}, 3_000_000_000)
    p2 = f.poll()
    assert p2 is not None and p2.version == "v2"
    write(path, {"version": "v3", "thresholds": {"tiers": {"x": {"review": 2, "block": 3}}}},
          4_000_000_000)
    with pytest.raises(PolicyError):
        f.poll()
    assert f.poll() is None  # refused once, not at every poll
    path.unlink()
    with pytest.raises(PolicyError, match="cannot read"):
        f.poll()
    assert f.poll() is None
    write(path, {"version": "v4"}, 5_000_000_000)
    p4 = f.poll()
    assert p4 is not None and p4.version == "v4"


def test_a_swap_during_a_batch_applies_from_the_next_batch() -> None:
    """The ladder reads the holder once per batch: a swap while the primary runs (the
    watcher's thread) changes neither the thresholds nor the version of that batch."""
    holder = PolicyHolder(policy())
    new = parse_policy({"version": "test-2",
                        "thresholds": {"tiers": {"primary": {"review": 0.0, "block": 1.0}}},
                        "review_rules": [{"name": "all", "when": {"amount_at_least": 0}}]})

    def fn(x: np.ndarray) -> np.ndarray:
        holder.swap(new)
        return np.full(len(x), 0.3)

    clock = FakeClock()
    model: FnModel = primary_model(fn=fn)
    ladder = build(clock, primary=model, policy=holder)
    txs = [make_tx(i) for i in range(8)]
    first = score(ladder, clock, txs)
    assert holder.current is new
    assert {s.policy_version for s in first} == {"test-1"}
    assert {(s.action, s.flag_for_review) for s in first} == {(Action.ALLOW, False)}
    second = score(ladder, clock, txs)
    assert {s.policy_version for s in second} == {"test-2"}
    assert {(s.action, s.flag_for_review) for s in second} == {(Action.REVIEW, True)}
    assert all("policy_review:all" in s.reasons for s in second)


def test_no_holder_means_the_builtin_policy() -> None:
    clock = FakeClock()
    ladder = build(clock)
    assert ladder.policy.current is BUILTIN
    assert {s.policy_version for s in score(ladder, clock, [make_tx(1)])} == {None}
