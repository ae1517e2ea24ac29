"""The `JoinStore` contract, run against every implementation: in memory
(tests/unit/stream_app/quality) and Redis (tests/integration/test_quality.py)."""

from __future__ import annotations

from collections.abc import Callable

from stream_app.quality.join import JoinStore, Offer

MakeStore = Callable[[], JoinStore]


def s(tx: str, payload: bytes = b"S") -> Offer:
    return Offer(tx, "score", payload)


def lb(tx: str, payload: bytes = b"1") -> Offer:
    return Offer(tx, "label", payload)


class JoinStoreContract:
    """Subclasses provide a `store` pytest fixture (a fresh, empty store)."""

    def test_score_then_label_joins_and_returns_the_score(self, store: JoinStore) -> None:
        assert [r.status for r in store.offer([s("a", b"score-a")])] == ["pending"]
        [r] = store.offer([lb("a")])
        assert (r.status, r.other) == ("joined", b"score-a")

    def test_label_then_score_joins_and_returns_the_label(self, store: JoinStore) -> None:
        assert store.offer([lb("b", b"0")])[0].status == "pending"
        [r] = store.offer([s("b")])
        assert (r.status, r.other) == ("joined", b"0")

    def test_both_sides_in_one_batch_join_in_order(self, store: JoinStore) -> None:
        rs = store.offer([lb("c"), s("d"), s("c"), lb("d", b"0")])
        assert [(r.status, r.other) for r in rs] == [
            ("pending", None), ("pending", None), ("joined", b"1"), ("joined", b"S")]

    def test_redelivery_is_a_duplicate_before_and_after_the_join(self, store: JoinStore) -> None:
        assert store.offer([s("e"), s("e")])[1].status == "duplicate"
        assert store.offer([lb("e")])[0].status == "joined"
        assert [r.status for r in store.offer([s("e"), lb("e"), lb("e", b"0")])] == [
            "duplicate"] * 3

    def test_ids_do_not_interfere(self, store: JoinStore) -> None:
        store.offer([s(f"id{i}") for i in range(50)])
        rs = store.offer([lb(f"id{i}") for i in range(0, 50, 2)] + [lb("other")])
        assert [r.status for r in rs] == ["joined"] * 25 + ["pending"]

    def test_empty_offer(self, store: JoinStore) -> None:
        assert store.offer([]) == []
