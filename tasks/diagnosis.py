"""Fit diagnostics: lesson 2's rules for reading loss curves, applied to every trial.

One label per run, with the evidence that chose it, in this order of precedence:

- ``diverged``: the learning rate is too high — a loss became NaN/inf, training ended
  far worse than it started, or the validation loss exploded past the untrained model's loss
  and stayed there for the last ``EXPLODED_EPOCHS`` epochs (one epoch's validation loss is not
  enough: after a handful of steps a network trained from scratch predicts badly in eval mode
  whatever its rate, its batch-norm statistics still far from the data's);
- ``too_slow``: the learning rate is too low — the training loss barely moved;
- ``too_few_steps``: under ``MIN_STEPS`` optimizer steps, too few for the curves to say
  whether the rate is right: more images, more epochs or pretrained weights, not another rate;
- ``overfitting``: over the last epochs the training loss kept falling while the validation
  loss rose;
- ``underfitting``: the training loss sits above the validation loss, or the run ended far
  from the best trial of its sweep;
- ``good`` otherwise.

The rules read plain lists of numbers, so the same function diagnoses an image classifier's
epochs and the hand-written SGD of :mod:`tasks.sgd` (which has no validation set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The MLflow tags a diagnosed run carries (trials, lesson2-sgd runs); `ursa status` reads them.
DIAGNOSIS_TAG = "ursa.diagnosis"
EVIDENCE_TAG = "ursa.diagnosis_evidence"

DIVERGED, TOO_SLOW, TOO_FEW_STEPS, OVERFITTING, UNDERFITTING, GOOD = (
    "diverged",
    "too_slow",
    "too_few_steps",
    "overfitting",
    "underfitting",
    "good",
)
# What to do about too few steps (the sweep summary says it too): a lower rate would not help.
TOO_FEW_STEPS_ADVICE = "add images, train more epochs, or start from pretrained weights"

# Why these thresholds: a healthy run cuts its training loss by far more than 10%, even in
# one epoch; a loss that ends 50% above where it started has lost what it knew; a train loss
# 10% above validation is more than the noise of averaging it over an epoch of learning; a run
# 5 accuracy points under the sweep's best (or ending at twice its loss) is not a close second.
MIN_RELATIVE_DROP = 0.10
EXPLODE_FACTOR = 1.5
UNDERFIT_MARGIN = 0.10
# ...and by more than this many nats: once both losses are a few hundredths, a relative
# margin is smaller than the sampling noise between two sets of a few hundred images.
UNDERFIT_MIN_GAP = 0.02
FAR_FROM_BEST = 0.05
OVERFIT_EPOCHS = 3
# Fewer optimizer steps than this say nothing about the rate: a one-cycle schedule has barely
# warmed up, and a from-scratch model's batch-norm statistics have barely moved.
MIN_STEPS = 10
# A validation loss past the untrained loss for this many last epochs is divergence.
EXPLODED_EPOCHS = 2
FAR_LOSS_FACTOR = 2.0


@dataclass(frozen=True)
class Diagnosis:
    label: str
    evidence: str

    @property
    def usable(self) -> bool:
        """A diverged run is never chosen as a sweep's best."""
        return self.label != DIVERGED


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def diagnose(
    train_losses: list[float],
    val_losses: list[float] | None = None,
    initial_loss: float | None = None,
    val_accuracy: float | None = None,
    best_val_accuracy: float | None = None,
    best_train_loss: float | None = None,
    clean_train_loss: float | None = None,
    steps: int | None = None,
) -> Diagnosis:
    """Diagnose one run from its curves.

    ``train_losses``: per step or per epoch, in order. ``val_losses``: per epoch, or None.
    ``initial_loss``: the loss before any update (the first mini-batch's loss); defaults to
    the first training loss. ``val_accuracy`` / ``best_val_accuracy``: this run's final
    accuracy and the best of its sweep, for "far from the best trial"; without accuracies
    (a regression), ``best_train_loss``: the lowest final training loss of the sweep.
    ``clean_train_loss``: the final model's loss on training data measured like the validation
    loss (no augmentation, no running mean); when given, the underfitting rule compares it,
    not the last epoch's running training loss, with the validation loss. ``steps``: the
    optimizer steps taken, when the training losses are per epoch (None: one per point).
    """
    if not train_losses:
        raise ValueError("diagnose needs at least one training loss; got an empty list.")
    val = list(val_losses or [])
    start = train_losses[0] if initial_loss is None else initial_loss

    for name, curve in (("training", train_losses), ("validation", val)):
        bad = next((i for i, v in enumerate(curve) if not math.isfinite(v)), None)
        if bad is not None:
            return Diagnosis(
                DIVERGED, f"{name} loss became {curve[bad]} at point {bad + 1} of {len(curve)}"
            )
    if not math.isfinite(start):
        return Diagnosis(DIVERGED, f"the initial loss is {start}")
    end = train_losses[-1]
    if end > EXPLODE_FACTOR * start:
        return Diagnosis(
            DIVERGED,
            f"training loss rose from {_fmt(start)} to {_fmt(end)} "
            f"(over {EXPLODE_FACTOR}x where it started)",
        )
    drop = (start - end) / start if start > 0 else 0.0
    if steps is not None and steps < MIN_STEPS:
        ending = f", validation loss {_fmt(val[-1])}" if val else ""
        return Diagnosis(
            TOO_FEW_STEPS,
            f"only {steps} optimizer steps (training loss {_fmt(start)} -> {_fmt(end)}{ending}); "
            f"under {MIN_STEPS} no curve tells a good rate from a bad one: {TOO_FEW_STEPS_ADVICE}",
        )
    limit = EXPLODE_FACTOR * start
    if len(val) >= EXPLODED_EPOCHS and all(v > limit for v in val[-EXPLODED_EPOCHS:]):
        return Diagnosis(
            DIVERGED,
            f"validation loss stayed over {EXPLODE_FACTOR}x the untrained loss {_fmt(start)} "
            f"for the last {EXPLODED_EPOCHS} epochs "
            f"({', '.join(_fmt(v) for v in val[-EXPLODED_EPOCHS:])})",
        )
    if drop < MIN_RELATIVE_DROP:
        return Diagnosis(
            TOO_SLOW,
            f"training loss moved {drop:.1%} ({_fmt(start)} -> {_fmt(end)}) over "
            f"{len(train_losses)} points; a useful rate cuts it by over {MIN_RELATIVE_DROP:.0%}",
        )

    if len(val) >= OVERFIT_EPOCHS and len(train_losses) >= OVERFIT_EPOCHS:
        t, v = train_losses[-OVERFIT_EPOCHS:], val[-OVERFIT_EPOCHS:]
        train_falls = all(b < a for a, b in zip(t, t[1:], strict=False))
        val_rises = all(b > a for a, b in zip(v, v[1:], strict=False))
        if train_falls and val_rises:
            return Diagnosis(
                OVERFITTING,
                f"over the last {OVERFIT_EPOCHS} epochs training loss fell "
                f"{_fmt(t[0])} -> {_fmt(t[-1])} while validation loss rose "
                f"{_fmt(v[0])} -> {_fmt(v[-1])}",
            )

    fitted = end if clean_train_loss is None else clean_train_loss
    if val and fitted > (1 + UNDERFIT_MARGIN) * val[-1] and fitted - val[-1] > UNDERFIT_MIN_GAP:
        return Diagnosis(
            UNDERFITTING,
            f"final training loss {_fmt(fitted)} is above validation loss {_fmt(val[-1])}: "
            "train longer or at a higher rate",
        )
    if (
        val_accuracy is not None
        and best_val_accuracy is not None
        and val_accuracy < best_val_accuracy - FAR_FROM_BEST
    ):
        return Diagnosis(
            UNDERFITTING,
            f"validation accuracy {val_accuracy:.4f} is over {FAR_FROM_BEST:.0%} points "
            f"under the sweep's best {best_val_accuracy:.4f}",
        )
    if best_train_loss is not None and end > FAR_LOSS_FACTOR * best_train_loss:
        return Diagnosis(
            UNDERFITTING,
            f"final training loss {_fmt(end)} is over {FAR_LOSS_FACTOR:g}x the sweep's best "
            f"{_fmt(best_train_loss)}: train longer or at a higher rate",
        )
    ending = f"; validation loss {_fmt(val[-1])}" if val else ""
    return Diagnosis(GOOD, f"training loss fell {drop:.0%} ({_fmt(start)} -> {_fmt(end)}){ending}")


def sweep_advice(labels: list[str]) -> list[str]:
    """What a sweep's diagnoses, taken together, ask of the user beyond choosing a rate."""
    few = labels.count(TOO_FEW_STEPS)
    if not few:
        return []
    return [
        f"{few} of {len(labels)} trials took under {MIN_STEPS} optimizer steps, too few to "
        f"judge their rate: {TOO_FEW_STEPS_ADVICE} (another rate would not help)"
    ]
