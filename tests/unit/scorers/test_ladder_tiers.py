"""Each tier answering, and each failure sending records down the ladder (fake clock)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ladder_fakes import (
    EVENT_NAMES,
    FakeStore,
    RecordingListener,
    VirtualTimeExecutor,
    build,
    fallback_model,
    make_tx,
    primary_model,
    small_config,
)

from scorers.breaker import State
from scorers.clock import FakeClock
from scorers.deadline import Deadline
from scorers.faults import FaultSwitch, FaultyModel
from topics.schemas import Action, Tier

N = 16


def run(ladder, clock: FakeClock, n: int = N, budget_s: float = 0.05, **tx_changes):  # type: ignore[no-untyped-def]
    txs = [make_tx(i, **tx_changes) for i in range(n)]
    return txs, ladder.score_batch(txs, Deadline.after(clock, budget_s))


def faulty_ladder(clock: FakeClock, **kw):  # type: ignore[no-untyped-def]
    executor = VirtualTimeExecutor(clock)
    switch = FaultSwitch()
    model = FaultyModel(primary_model(), switch, sleep=executor.sleep)
    listener = RecordingListener()
    ladder = build(clock, primary=model, executor=executor, listener=listener, **kw)
    return ladder, switch, listener


def test_healthy_batch_is_answered_by_the_primary() -> None:
    clock = FakeClock()
    ladder, _, listener = faulty_ladder(clock)
    txs, scores = run(ladder, clock)
    assert [s.transaction_id for s in scores] == [t.transaction_id for t in txs]
    assert {s.tier for s in scores} == {Tier.PRIMARY}
    assert {s.model_version for s in scores} == {"p-1"}
    s = scores[0]
    assert s.score == pytest.approx(1 / (1 + np.exp(-(10 - 500) / 50)), rel=1e-5)
    assert s.action is Action.ALLOW and not s.flag_for_review
    assert s.confidence == pytest.approx(abs(2 * s.score - 1))
    assert s.scored_at_s == clock.wall() and s.latency_s >= 0
    assert ("tier", Tier.PRIMARY, "p-1", N) in listener.events


def test_actions_follow_the_manifest_thresholds() -> None:
    clock = FakeClock()
    ladder, _, _ = faulty_ladder(clock)
    txs = [make_tx(0, amount=10.0), make_tx(1, amount=510.0), make_tx(2, amount=700.0)]
    scores = ladder.score_batch(txs, Deadline.after(clock, 0.05))
    assert [s.action for s in scores] == [Action.ALLOW, Action.REVIEW, Action.BLOCK]
    assert [s.flag_for_review for s in scores] == [False, True, False]


@pytest.mark.parametrize(("fault", "reason"), [
    ({"latency_s": 1.0}, "primary_timeout"),
    ({"cuda_error": True}, "primary_cuda_error"),
    ({"oom": True}, "primary_oom"),
])
def test_batch_wide_faults_send_the_whole_batch_to_the_fallback(fault: dict[str, object],
                                                                reason: str) -> None:
    clock = FakeClock()
    ladder, switch, _ = faulty_ladder(clock)
    switch.set(**fault)
    start = clock.monotonic()
    _, scores = run(ladder, clock)
    assert {s.tier for s in scores} == {Tier.FALLBACK}
    assert all(s.reasons == (reason,) and s.model_version == "f-1" for s in scores)
    assert clock.monotonic() - start <= 0.05  # never past the deadline


def test_oom_message_without_the_cuda_type_is_recognised() -> None:
    clock = FakeClock()
    model = primary_model(fn=lambda x: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")))
    _, scores = run(build(clock, primary=model), clock)
    assert {s.reasons for s in scores} == {("primary_oom",)}
    assert len(model.calls) == 1  # no bisection on device faults


def test_exception_on_every_call_is_a_dependency_failure() -> None:
    clock = FakeClock()
    ladder, switch, listener = faulty_ladder(clock)
    switch.set(error=True)
    for _ in range(10):
        _, scores = run(ladder, clock)
        assert {s.tier for s in scores} <= {Tier.FALLBACK}
    assert ladder.breakers["primary"].state is State.OPEN
    assert ("breaker", "primary", "closed", "open") in listener.events
    _, scores = run(ladder, clock)
    assert {s.reasons for s in scores} == {("primary_breaker_open",)}


def test_poison_records_are_isolated_by_bisection() -> None:
    clock = FakeClock()
    switch = FaultSwitch()
    executor = VirtualTimeExecutor(clock)
    model = FaultyModel(primary_model(executor=executor), switch)
    ladder = build(clock, primary=model, executor=executor)
    switch.set(poison_ids=frozenset({13.0, 19.0}))  # amount = 10 + i: records 3 and 9
    txs, scores = run(ladder, clock)
    bad = {3, 9}
    for i, s in enumerate(scores):
        assert s.tier is (Tier.FALLBACK if i in bad else Tier.PRIMARY)
        if i in bad:
            assert s.reasons == ("primary_poison",)
    assert ladder.breakers["primary"].state is State.CLOSED
    for _ in range(20):  # bad input never opens the breaker
        run(ladder, clock)
    assert ladder.breakers["primary"].state is State.CLOSED


def test_nan_rows_and_low_confidence_rows_go_down_alone() -> None:
    clock = FakeClock()

    def fn(x: np.ndarray) -> np.ndarray:
        out = np.full(len(x), 0.01, dtype=np.float32)
        out[2] = np.nan
        out[4] = np.inf
        out[5] = 0.52  # confidence 0.04
        out[6] = 1.5
        return out

    ladder = build(clock, primary=primary_model(fn=fn), config=small_config(primary_min_confidence=0.1))
    _, scores = run(ladder, clock, n=8)
    assert scores[2].reasons == ("primary_nan",) and scores[4].reasons == ("primary_nan",)
    assert scores[5].reasons == ("primary_low_confidence",)
    assert scores[6].reasons == ("primary_out_of_range",)
    assert [s.tier for s in scores].count(Tier.PRIMARY) == 4
    assert {scores[i].tier for i in (2, 4, 5, 6)} == {Tier.FALLBACK}


def test_nan_fault_switch() -> None:
    clock = FakeClock()
    ladder, switch, _ = faulty_ladder(clock)
    switch.set(nan_fraction=1.0)
    _, scores = run(ladder, clock)
    assert {s.reasons for s in scores} == {("primary_nan",)}


def test_feature_store_down_sends_batch_to_fallback_and_missing_rows_alone() -> None:
    clock = FakeClock()
    store = FakeStore(clock)
    ladder = build(clock, feature_store=store)
    store.missing = {"c1"}
    _, scores = run(ladder, clock, n=8)
    assert scores[1].reasons == ("primary_features_missing",) and scores[1].tier is Tier.FALLBACK
    assert scores[0].tier is Tier.PRIMARY
    store.down = True
    _, scores = run(ladder, clock, n=8)
    assert {s.reasons for s in scores} == {("primary_features_unavailable",)}
    assert ladder.breakers["primary"].state is State.CLOSED  # the model did nothing wrong


def test_slow_feature_store_counts_as_a_failure() -> None:
    clock = FakeClock()
    store = FakeStore(clock)
    store.latency_s = 0.05  # the chaos suite's injected latency: over the default fetch timeout
    ladder = build(clock, feature_store=store)
    _, scores = run(ladder, clock)
    assert {s.tier for s in scores} == {Tier.FALLBACK}


def test_the_ladder_never_writes_the_feature_store() -> None:
    # the live worker applies committed batches exactly once (stream_app.features)
    clock = FakeClock()
    store = FakeStore(clock)
    ladder = build(clock, feature_store=store)
    _, first = run(ladder, clock, n=4)
    _, second = run(ladder, clock, n=4)
    assert store.updates == []
    assert [s.score for s in first] == [s.score for s in second]


def test_bad_records_in_a_good_batch_go_to_the_best_tier_left() -> None:
    clock = FakeClock()
    ladder = build(clock)
    txs = [make_tx(0), make_tx(1, customer_id=None, problems=("customer_id: missing",)),
           make_tx(2, merchant_category=None), make_tx(3, amount=None),
           make_tx(4, amount=-5.0), make_tx(5, channel="telepathy"), make_tx(6)]
    scores = ladder.score_batch(txs, Deadline.after(clock, 0.05))
    assert [s.tier for s in scores] == [Tier.PRIMARY, Tier.FALLBACK, Tier.RULES, Tier.DEFAULT,
                                        Tier.DEFAULT, Tier.RULES, Tier.PRIMARY]
    assert scores[1].reasons == ("invalid_input:customer_id_missing",)
    assert scores[3].reasons == ("invalid_input:amount_missing", "default")
    assert scores[3].action is Action.ALLOW and scores[3].flag_for_review
    assert scores[3].confidence == 0.0 and scores[3].model_version == "default"


def test_fallback_failure_goes_to_rules_with_reasons() -> None:
    clock = FakeClock()

    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("fallback bug")

    ladder = build(clock, primary=None, fallback=fallback_model(fn=broken))
    txs = [make_tx(0, amount=6000.0, merchant_category="7995", channel="ecom"), make_tx(1)]
    scores = ladder.score_batch(txs, Deadline.after(clock, 0.05))
    assert [s.tier for s in scores] == [Tier.RULES, Tier.RULES]
    assert scores[0].reasons[:2] == ("primary_unavailable", "fallback_exception")
    assert {"rule:very_high_amount", "rule:high_risk_merchant"} <= set(scores[0].reasons)
    assert scores[0].flag_for_review and scores[0].model_version == "rules-v1"
    assert not scores[1].flag_for_review and scores[1].action is Action.ALLOW


def test_nothing_configured_still_answers_everyone() -> None:
    clock = FakeClock()
    ladder = build(clock, primary=None, fallback=None, feature_store=None)
    _, scores = run(ladder, clock)
    assert {s.tier for s in scores} == {Tier.RULES}


def test_event_feature_bug_sends_records_to_rules() -> None:
    from scorers.standard import standard_ladder

    clock = FakeClock()

    def broken(txs: object) -> np.ndarray:
        raise KeyError("bug")

    ladder = standard_ladder(small_config(), primary=None, fallback=fallback_model(),
                             event_features=broken, clock=clock,
                             event_feature_names=EVENT_NAMES, online_feature_names=())
    _, scores = run(ladder, clock)
    assert {s.tier for s in scores} == {Tier.RULES}
    assert all(s.reasons[0] == "event_features_error" for s in scores)


def test_no_budget_left_skips_the_primary() -> None:
    clock = FakeClock()
    ladder, _, listener = faulty_ladder(clock)
    _, scores = run(ladder, clock, budget_s=0.004)  # below the fallback reserve
    assert {s.reasons for s in scores} == {("primary_deadline",)}
    assert ("deadline_miss", "primary") in listener.events


def test_listener_errors_never_reach_the_ladder() -> None:
    class Broken(RecordingListener):
        def on_tier_result(self, *a: object) -> None:  # type: ignore[override]
            raise RuntimeError("metrics bug")

    clock = FakeClock()
    _, scores = run(build(clock, listener=Broken()), clock)
    assert len(scores) == N


def test_feature_name_mismatch_leaves_primary_unavailable() -> None:
    clock = FakeClock()
    from ladder_fakes import FnModel

    ladder = build(clock, primary=FnModel("p-x", ("a", "b")))
    assert ladder.unavailable["primary"].startswith("feature_mismatch")
    assert ladder.breakers["primary"].state is State.FORCED_OPEN
    _, scores = run(ladder, clock)
    assert {s.tier for s in scores} == {Tier.FALLBACK}


def test_cuda_oom_type_from_torch() -> None:
    assert issubclass(torch.cuda.OutOfMemoryError, RuntimeError)


def test_caller_reported_load_failure_keeps_the_primary_out() -> None:
    clock = FakeClock()
    ladder = build(clock, primary=None, primary_unavailable_reason="checksum mismatch")
    assert ladder.unavailable["primary"] == "checksum mismatch"
    assert ladder.breakers["primary"].state is State.FORCED_OPEN
    _, scores = run(ladder, clock)
    assert {s.reasons for s in scores} == {("primary_unavailable",)}
    ladder.breakers["primary"].reset()  # an operator can't revive a model that isn't there
    _, scores = run(ladder, clock)
    assert {s.tier for s in scores} == {Tier.FALLBACK}
