"""The fit diagnostics on constructed curves: one curve per rule, and the order of the rules."""

from __future__ import annotations

import math

import pytest

from tasks.diagnosis import (
    DIVERGED,
    GOOD,
    OVERFITTING,
    TOO_FEW_STEPS,
    TOO_SLOW,
    UNDERFITTING,
    diagnose,
    sweep_advice,
)


def test_a_nan_or_exploding_loss_is_diverged() -> None:
    d = diagnose([2.3, 5.0, math.nan], [2.2, math.inf])
    assert d.label == DIVERGED and "nan" in d.evidence and not d.usable
    assert diagnose([2.3, 9.0, 40.0]).label == DIVERGED
    # Training looked fine but the validation loss blew past the untrained model's loss.
    d = diagnose([2.3, 1.0, 0.5], [1.2, 30.0, 80.0], initial_loss=2.3)
    assert d.label == DIVERGED and "80" in d.evidence


def test_a_loss_that_barely_moves_is_too_slow() -> None:
    d = diagnose([2.30, 2.29, 2.28], [2.31, 2.30, 2.29], initial_loss=2.31)
    assert d.label == TOO_SLOW and "1.3%" in d.evidence


def test_train_falling_while_validation_rises_is_overfitting() -> None:
    d = diagnose([2.0, 0.5, 0.3, 0.2, 0.1], [1.0, 0.4, 0.45, 0.5, 0.6], initial_loss=2.3)
    assert d.label == OVERFITTING and "rose" in d.evidence
    # Validation rising only once, or not over the last epochs, is not overfitting.
    assert diagnose([2.0, 0.5, 0.3, 0.2], [1.0, 0.4, 0.5, 0.3], initial_loss=2.3).label == GOOD


def test_train_above_validation_or_far_from_best_is_underfitting() -> None:
    d = diagnose([2.0, 1.2, 0.9], [1.0, 0.7, 0.6], initial_loss=2.3)
    assert d.label == UNDERFITTING and "above validation" in d.evidence
    d = diagnose(
        [2.0, 0.6, 0.4],
        [1.0, 0.5, 0.4],
        initial_loss=2.3,
        val_accuracy=0.80,
        best_val_accuracy=0.97,
    )
    assert d.label == UNDERFITTING and "0.9700" in d.evidence
    d = diagnose([6.5, 2.0, 1.5], best_train_loss=0.08)
    assert d.label == UNDERFITTING and "best" in d.evidence


def test_a_healthy_run_is_good() -> None:
    d = diagnose(
        [2.0, 0.6, 0.4],
        [1.0, 0.5, 0.42],
        initial_loss=2.3,
        val_accuracy=0.96,
        best_val_accuracy=0.97,
    )
    assert d.label == GOOD and d.usable


def test_diagnose_refuses_an_empty_curve() -> None:
    with pytest.raises(ValueError, match="empty"):
        diagnose([])


def test_the_clean_training_loss_decides_underfitting_when_given() -> None:
    # Augmented, running-mean training loss above validation: alone it reads as underfitting,
    curve, val = [2.3, 0.6, 0.3], [0.9, 0.3, 0.12]
    assert diagnose(curve, val).label == UNDERFITTING
    # but the final model scored on training images like validation fits them well.
    assert diagnose(curve, val, clean_train_loss=0.05).label == GOOD
    assert diagnose(curve, val, clean_train_loss=0.5).label == UNDERFITTING


def test_one_epochs_validation_loss_with_a_sane_training_loss_is_not_divergence() -> None:
    """The from-scratch trial of issue #21: 4 steps, training loss 1.37 -> 1.79 (finite, no
    explosion), validation loss 28.9 against 1.37 untrained. Not a rate that is too high."""
    d = diagnose([1.47], [28.94], initial_loss=1.373, steps=4)
    assert d.label == TOO_FEW_STEPS and d.usable, d.evidence
    assert "only 4 optimizer steps" in d.evidence and "pretrained weights" in d.evidence
    # With enough steps, one epoch's exploded validation loss still does not make it diverged...
    assert diagnose([1.0], [28.94], initial_loss=1.373, steps=40).label != DIVERGED
    # ...but a validation loss that explodes and stays up across epochs does.
    d = diagnose([1.2, 1.0], [28.9, 30.2], initial_loss=1.373, steps=80)
    assert d.label == DIVERGED and "last 2 epochs" in d.evidence
    # Evidence from training itself needs no minimum of steps.
    assert diagnose([1.37, 2.5], initial_loss=1.37, steps=2).label == DIVERGED
    assert diagnose([1.37, math.nan], steps=2).label == DIVERGED
    (advice,) = sweep_advice([TOO_FEW_STEPS, GOOD])
    assert "1 of 2 trials" in advice and "more epochs" in advice
    assert sweep_advice([GOOD, DIVERGED]) == []
