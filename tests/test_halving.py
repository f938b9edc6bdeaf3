"""Successive halving's schedule: rungs, promotion and the budget it spends."""

from __future__ import annotations

import math

import pytest

from tasks.halving import budget, promoted, rung_trials, rungs
from tasks.train import TrialResult


def _r(lr: float, epochs: int, acc: float, loss: float = 0.5, diagnosis: str = "good"):
    return TrialResult(lr, epochs, f"{lr}-{epochs}", acc, loss, loss, "", 0.0, [], 2.3, diagnosis)


def test_rungs_are_the_grid_epochs_smallest_first() -> None:
    assert rungs([4, 1, 2, 2]) == [1, 2, 4]
    assert [t.epochs for t in rung_trials([1e-3, 1e-2], 2)] == [2, 2]
    with pytest.raises(ValueError, match="positive"):
        rungs([0, 2])


def test_promotion_keeps_the_best_third_and_never_a_diverged_trial() -> None:
    rung = [
        _r(1e-4, 1, 0.60),
        _r(1e-3, 1, 0.90),
        _r(3e-3, 1, 0.95),
        _r(1e-2, 1, 0.93),
        _r(1.0, 1, 0.99, math.nan, "diverged"),
        _r(1e-5, 1, 0.20),
    ]
    assert promoted(rung, eta=3) == [3e-3, 1e-2]
    assert promoted(rung[:2], eta=3) == [1e-3]  # always at least one goes on
    assert promoted([_r(1.0, 1, 0.9, math.nan, "diverged")]) == []
    with pytest.raises(ValueError, match="eta"):
        promoted(rung, eta=1)


def test_budget_counts_the_epochs_saved_against_the_full_grid() -> None:
    lrs, epochs = [1e-3, 3e-3, 1e-2], [1, 2, 4]
    spent = budget(lrs, epochs, [_r(lr, 1, 0.9) for lr in lrs] + [_r(3e-3, 2, 0.95)])
    assert (spent.grid_epochs, spent.used_epochs, spent.saved_epochs) == (21, 5, 16)
    assert "5 of 21" in str(spent)
