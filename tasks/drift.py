"""Drift statistics: how far the last window of the prediction log is from the champion's
validation data, and the verdict ``stable``, ``watch`` or ``drifted``.

Plain functions over arrays and counts (no Prefect, no MLflow), with SciPy's tests:

- predicted classes: the population stability index (PSI) for the size of the shift and a
  chi-square test of the 2 x k table (window counts against reference counts) for whether
  it is more than sampling noise;
- confidence, brightness, contrast, aspect ratio: the two-sample Kolmogorov-Smirnov test
  (its statistic is the size, its p-value the evidence);
- the share of low-confidence answers (Fisher's exact test for a rise), and the share of
  feedback that disagrees with the model.

A change counts only when it is both unlikely to be noise (p-value) and large (effect), so
a big window of a harmless difference does not page anybody, nor a small noisy one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import special, stats

STABLE, WATCH, DRIFTED = "stable", "watch", "drifted"
INPUTS = ("brightness", "contrast", "aspect")


@dataclass(frozen=True)
class Thresholds:
    """When a change is watched or called drift; each pair is (watch, drifted)."""

    p_watch: float = 0.01  # evidence: the test's p-value under this
    p_drifted: float = 0.001
    psi: tuple[float, float] = (0.1, 0.25)  # the usual PSI rule of thumb
    ks: tuple[float, float] = (0.15, 0.3)  # KS statistic: largest gap between the two CDFs
    low_confidence: float = 0.5  # an answer under this probability is low-confidence
    low_share_rise: tuple[float, float] = (0.1, 0.2)  # rise of the low-confidence share
    disagreement: tuple[float, float] = (0.25, 0.5)  # share of feedback saying "wrong"
    min_feedback: int = 5  # feedback items needed before their disagreement counts
    min_predictions: int = 30  # fewer answers in the window: no verdict but stable


@dataclass(frozen=True)
class Sample:
    """Answers to compare: top-1 classes and probabilities, and the input statistics."""

    labels: list[str]
    confidences: np.ndarray
    inputs: dict[str, np.ndarray]  # brightness, contrast, aspect


@dataclass
class Drift:
    verdict: str
    reasons: list[str]  # why, in words with the numbers; empty when stable
    n_window: int
    n_reference: int
    numbers: dict[str, float] = field(default_factory=dict)  # every statistic, by name
    window_shares: dict[str, float] = field(default_factory=dict)
    reference_shares: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def psi(window: np.ndarray, reference: np.ndarray, floor: float = 1e-4) -> float:
    """Population stability index of two count vectors: sum (p - q) ln(p / q), with shares
    floored so that a class absent on one side does not make it infinite."""
    p = np.maximum(window / max(window.sum(), 1), floor)
    q = np.maximum(reference / max(reference.sum(), 1), floor)
    return float(np.sum(special.rel_entr(p, q) + special.rel_entr(q, p)))


def class_test(window: np.ndarray, reference: np.ndarray) -> float:
    """p-value of the chi-square test that both count vectors come from one distribution."""
    table = np.vstack([window, reference])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(stats.chi2_contingency(table).pvalue)


def drift(
    window: Sample,
    reference: Sample,
    classes: list[str],
    feedback: list[tuple[str, str]] = (),
    thresholds: Thresholds = Thresholds(),
) -> Drift:
    """Compare ``window`` with ``reference``; ``feedback`` holds (person's class, model's
    class) pairs of the window. The verdict is the worst of the signals."""
    t = thresholds
    n, n_ref = len(window.labels), len(reference.labels)
    if n < t.min_predictions or n_ref == 0:
        return Drift(STABLE, [f"only {n} answers in the window (< {t.min_predictions})"], n, n_ref)
    index = {c: i for i, c in enumerate(classes)}
    counts = np.bincount([index[c] for c in window.labels if c in index], minlength=len(classes))
    ref_counts = np.bincount([index[c] for c in reference.labels], minlength=len(classes))
    numbers: dict[str, float] = {}
    signals: list[tuple[str, str]] = []  # (level, reason)

    def judge(effect: float, p: float, limits: tuple[float, float], text: str) -> None:
        if p < t.p_drifted and effect >= limits[1]:
            signals.append((DRIFTED, text))
        elif p < t.p_watch and effect >= limits[0]:
            signals.append((WATCH, text))

    numbers["psi_classes"] = psi(counts, ref_counts)
    numbers["p_classes"] = class_test(counts, ref_counts)
    judge(
        numbers["psi_classes"],
        numbers["p_classes"],
        t.psi,
        f"predicted classes shifted: PSI {numbers['psi_classes']:.2f}, "
        f"chi-square p {numbers['p_classes']:.1e}",
    )
    for name, a, b in [("confidence", window.confidences, reference.confidences)] + [
        (k, window.inputs[k], reference.inputs[k]) for k in INPUTS
    ]:
        result = stats.ks_2samp(a, b)
        numbers[f"ks_{name}"] = float(result.statistic)
        numbers[f"p_{name}"] = float(result.pvalue)
        numbers[f"mean_{name}"] = float(np.mean(a))
        numbers[f"reference_mean_{name}"] = float(np.mean(b))
        judge(
            result.statistic,
            result.pvalue,
            t.ks,
            f"{name} changed: KS {result.statistic:.2f} (p {result.pvalue:.1e}), "
            f"mean {np.mean(a):.3f} against {np.mean(b):.3f}",
        )
    low = float(np.mean(window.confidences < t.low_confidence))
    low_ref = float(np.mean(reference.confidences < t.low_confidence))
    numbers["low_confidence_share"], numbers["reference_low_confidence_share"] = low, low_ref
    n_low, n_low_ref = int(round(low * n)), int(round(low_ref * n_ref))
    table = [[n_low, n - n_low], [n_low_ref, n_ref - n_low_ref]]
    numbers["p_low_confidence"] = float(stats.fisher_exact(table, alternative="greater").pvalue)
    judge(
        low - low_ref,
        numbers["p_low_confidence"],
        t.low_share_rise,
        f"low-confidence answers {low:.0%} against {low_ref:.0%} "
        f"(Fisher p {numbers['p_low_confidence']:.1e})",
    )
    numbers["feedback_items"] = len(feedback)
    if feedback:
        disagree = float(np.mean([person != model for person, model in feedback]))
        numbers["feedback_disagreement"] = disagree
        if len(feedback) >= t.min_feedback:
            text = f"people say {disagree:.0%} of {len(feedback)} answers were wrong"
            if disagree >= t.disagreement[1]:
                signals.append((DRIFTED, text))
            elif disagree >= t.disagreement[0]:
                signals.append((WATCH, text))
    levels = [level for level, _ in signals]
    verdict = DRIFTED if DRIFTED in levels else WATCH if WATCH in levels else STABLE
    return Drift(
        verdict,
        [reason for _, reason in signals],
        n,
        n_ref,
        numbers,
        {c: round(float(k) / n, 4) for c, k in zip(classes, counts, strict=True)},
        {c: round(float(k) / n_ref, 4) for c, k in zip(classes, ref_counts, strict=True)},
    )
