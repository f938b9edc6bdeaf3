"""Successive halving's schedule: rungs, promotion and the budget it spends."""

from __future__ import annotations

import math

import pytest

from tasks.halving import (
    budget,
    direct_finalists,
    noise,
    projected_epochs,
    promoted,
    rung_trials,
    rungs,
    successive_halving,
)
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


def test_trials_tied_within_noise_go_on_while_the_budget_allows() -> None:
    rung = [_r(lr, 1, acc) for lr, acc in [(1, 0.95), (2, 0.94), (3, 0.935), (4, 0.93), (5, 0.5)]]
    assert promoted(rung, eta=3) == [1]  # no validation count: the best 1/eta
    # 0.94 vs 0.935 on 360 images differ by less than the noise (1.8 points): a tie at the cut.
    assert noise(0.94, 360) == pytest.approx(0.0177, abs=1e-4)
    assert promoted(rung, 3, n_valid=360, spare_epochs=100, later=[2]) == [1, 2, 3, 4]
    assert promoted(rung, 3, n_valid=360, spare_epochs=6, later=[2]) == [1, 2, 3]
    assert promoted(rung, 3, n_valid=360, spare_epochs=0, later=[2]) == [1]
    assert promoted(rung, 3, n_valid=100_000, spare_epochs=100, later=[2]) == [1]  # not tied
    assert projected_epochs(3, [2, 4], 3) == 3 * 2 + 1 * 4


def test_successive_halving_trains_rung_by_rung_when_the_budget_is_tight() -> None:
    """The rung loop without a flow: nine rates over epochs 1, 3, 9 with 15% of the grid's
    117 epochs. Three go on after the first rung; the 8 epochs left cannot train one of them
    for 9, so the 3-epoch rung chooses which one goes to the end."""
    accuracy = {lr: 0.5 + lr / 100 for lr in range(1, 10)}
    ran: list[list[tuple[float, int]]] = []

    def run(trials):
        ran.append([(t.lr, t.epochs) for t in trials])
        bonus = {(8, 3): 0.05}  # at 3 epochs the second of the first rung overtakes
        return [
            _r(t.lr, t.epochs, accuracy[t.lr] + t.epochs / 100 + bonus.get((t.lr, t.epochs), 0))
            for t in trials
        ]

    lrs = list(range(1, 10))
    results = successive_halving(lrs, [9, 1, 3], 3, run, n_valid=0, max_fraction=0.15, log=str)
    assert ran == [[(lr, 1) for lr in lrs], [(9, 3), (8, 3), (7, 3)], [(8, 9)]]
    assert budget(lrs, [1, 3, 9], results).used_epochs == 9 + 9 + 9


def test_ties_go_straight_to_the_last_rung_as_far_as_the_budget_reaches() -> None:
    """Six rates over epochs 1, 2, 4 (budget 16 of 42): three are tied after the first rung,
    and 12 epochs at 4 would pass the 10 left. The middle rung would let one through to the
    end; the budget trains two there, so the best two of the first rung skip it."""
    accuracy = {1: 0.90, 2: 0.93, 3: 0.94, 4: 0.935, 5: 0.80, 6: 0.10}
    ran: list[list[tuple[float, int]]] = []

    def run(trials):
        ran.append([(t.lr, t.epochs) for t in trials])
        return [_r(t.lr, t.epochs, accuracy[t.lr] + t.epochs / 100) for t in trials]

    results = successive_halving([1, 2, 3, 4, 5, 6], [4, 1, 2], 3, run, n_valid=360, log=str)
    assert ran[0] == [(lr, 1) for lr in (1, 2, 3, 4, 5, 6)]
    assert ran[1:] == [[(3, 4), (4, 4)]]  # 0.93 was tied too, but ranked third
    spent = budget([1, 2, 3, 4, 5, 6], [1, 2, 4], results)
    assert spent.used_epochs == 14 and spent.fraction <= 0.4


def test_survivors_the_budget_can_train_to_the_end_skip_the_middle_rungs() -> None:
    """Six rates over epochs 1, 2, 4 (budget 16 of 42): two go on after the first rung and
    both fit at 4 epochs (8 of the 10 left), so the 2-epoch rung, which here ranks them the
    other way round, is skipped and the 4-epoch scores decide."""
    first = {1: 0.70, 2: 0.90, 3: 0.87, 4: 0.80, 5: 0.76, 6: 0.73}
    later = {(2, 2): 0.94, (3, 2): 0.95, (2, 4): 0.98, (3, 4): 0.97}
    ran: list[list[tuple[float, int]]] = []

    def run(trials):
        ran.append([(t.lr, t.epochs) for t in trials])
        return [
            _r(t.lr, t.epochs, first[t.lr] if t.epochs == 1 else later[t.lr, t.epochs])
            for t in trials
        ]

    results = successive_halving([1, 2, 3, 4, 5, 6], [1, 2, 4], 3, run, n_valid=360, log=str)
    assert ran == [[(lr, 1) for lr in (1, 2, 3, 4, 5, 6)], [(2, 4), (3, 4)]]
    assert max(results, key=lambda r: r.val_accuracy).lr == 2
    assert budget([1, 2, 3, 4, 5, 6], [1, 2, 4], results).used_epochs == 14
    assert direct_finalists(2, [2, 4], 8, 3) == 2
    assert direct_finalists(3, [2, 4], 10, 3) == 2  # the middle rung would let one through
    assert direct_finalists(3, [2, 4], 3, 3) == 0  # not one fits: the middle rung chooses
    assert direct_finalists(2, [4], 100, 3) == 0  # already the last rung: nothing to skip
