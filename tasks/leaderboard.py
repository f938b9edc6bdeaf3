"""The order of a sweep's trials, in one place: the leaderboard, the best trial and the
rungs of successive halving all rank the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: reports (and so the ingest flow) must not import torch
    from tasks.train import TrialResult


def rank_key(r: TrialResult) -> tuple[bool, float, float]:
    """Usable trials first, then the highest validation accuracy, then the lowest loss."""
    return (not r.usable, -r.val_accuracy, r.val_loss)


def leaderboard(results: list[TrialResult]) -> list[TrialResult]:
    """Usable trials by accuracy then loss, then the excluded ones."""
    return sorted(results, key=rank_key)


def best_trial(results: list[TrialResult]) -> TrialResult:
    """Highest validation accuracy, then lowest validation loss; never a diverged trial."""
    board = leaderboard(results)
    if not board or not board[0].usable:
        raise RuntimeError(
            f"All {len(results)} trials diverged (non-finite loss or loss explosion): "
            "lower the learning rates, or run the learning-rate finder."
        )
    return board[0]
