"""Metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from scorers.lab.training.metrics import (
    average_precision,
    card_precision_at_k,
    precision_recall_curve,
    roc_auc,
)


def test_auc_and_ap_on_a_textbook_example() -> None:
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert roc_auc(y, s) == pytest.approx(0.75)
    assert average_precision(y, s) == pytest.approx((1.0 + 2 / 3) / 2)


def test_ties_count_half_and_constant_scores_give_chance() -> None:
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    y = np.array([0, 1, 0, 0, 1, 0, 0, 0])
    assert roc_auc(y, np.zeros(8)) == pytest.approx(0.5)
    assert average_precision(y, np.zeros(8)) == pytest.approx(y.mean())


def test_perfect_and_inverted_rankings() -> None:
    y = np.array([0, 0, 1, 1, 0])
    s = np.array([0.1, 0.2, 0.9, 0.8, 0.3])
    assert roc_auc(y, s) == 1.0 and average_precision(y, s) == 1.0
    assert roc_auc(y, -s) == 0.0


def test_pr_curve_points() -> None:
    precision, recall, thresholds = precision_recall_curve([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    np.testing.assert_allclose(thresholds, [0.9, 0.8, 0.7, 0.1])
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0, 1.0])


def test_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError):
        roc_auc([1, 1], [0.2, 0.3])


def test_card_precision_per_day_with_detected_cards_removed() -> None:
    # day 0: cards 1 (fraud, max 0.9), 2 (legit, 0.8), 3 (fraud, 0.1); top-2 = {1, 2} -> 1/2
    # day 1: card 1 already detected and removed; cards 2 (0.7, fraud), 3 (0.2) -> top-2 = 1/2
    day = [0, 0, 0, 0, 1, 1, 1]
    card = [1, 1, 2, 3, 1, 2, 3]
    y = [0, 1, 0, 1, 1, 1, 0]
    s = [0.3, 0.9, 0.8, 0.1, 0.99, 0.7, 0.2]
    assert card_precision_at_k(day, card, y, s, k=2) == pytest.approx(0.5)
    assert card_precision_at_k(day, card, y, s, k=1) == pytest.approx((1.0 + 1.0) / 2)
