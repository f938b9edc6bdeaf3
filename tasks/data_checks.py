"""Can this dataset make a classifier, and can its numbers be trusted? Checked before training.

Refused (:class:`DatasetUnusable`, before any trial starts): fewer than two classes (a
one-class "classifier" scores 100% and means nothing); a class without a training image (the
model could never predict it); an empty validation split (nothing would measure the model).

Warned (the sweep goes on, and MLflow and the summaries say so): fewer than
``MIN_VALID_PER_CLASS`` validation images in a class (one image more or less right moves
accuracy by whole points), and heavy imbalance (the largest class has over
``MAX_IMBALANCE`` times the training images of the smallest: accuracy then mostly measures
the large class).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from tasks.manifest import Dataset, ImageRow, read_rows

MIN_VALID_PER_CLASS = 10
MAX_IMBALANCE = 5.0
WARNINGS_TAG = "ursa.data_warnings"


class DatasetUnusable(ValueError):
    """The dataset cannot make a classifier; the message says why, with classes and counts."""


@dataclass(frozen=True)
class ClassCount:
    label: str
    train: int  # kept images in the training split
    valid: int  # kept images in the validation split
    other: int  # images not kept (duplicates, label conflicts, removed)


def class_counts(dataset: Dataset) -> list[ClassCount]:
    """Per label found in the manifest (kept or not), its images in each split, by label."""
    counts: dict[str, list[int]] = {}
    for r in read_rows(Path(dataset.manifest_path), ImageRow):
        c = counts.setdefault(r.label, [0, 0, 0])
        kept = r.status == "kept"
        c[0 if kept and r.split == "train" else 1 if kept and r.split == "valid" else 2] += 1
    return [ClassCount(label, *c) for label, c in sorted(counts.items())]


def describe(counts: list[ClassCount]) -> str:
    """``a: 12 train / 3 valid, b: ...``: the counts every message shows."""
    return ", ".join(f"{c.label}: {c.train} train / {c.valid} valid" for c in counts) or "none"


def unusable_reasons(counts: list[ClassCount], need_valid: bool = True) -> list[str]:
    """Why no classifier can be trained on these counts (empty when one can)."""
    reasons = []
    usable = [c for c in counts if c.train]
    if len(usable) < 2:
        reasons.append(
            f"a classifier needs at least 2 classes with training images; found "
            f"{len(usable)} ({', '.join(c.label for c in usable) or 'none'})"
        )
    untrained = [c for c in counts if not c.train]
    if untrained:
        reasons.append(
            "no training image in class "
            + ", ".join(f"{c.label} ({c.valid} valid, {c.other} not kept)" for c in untrained)
        )
    if need_valid and not sum(c.valid for c in counts):
        reasons.append("the validation split is empty: nothing would measure the model")
    return reasons


def unreliable_reasons(counts: list[ClassCount]) -> list[str]:
    """Why a trained model's numbers may mean little on these counts (empty when they hold)."""
    reasons = []
    few = [c for c in counts if c.valid < MIN_VALID_PER_CLASS]
    if few:
        reasons.append(
            f"fewer than {MIN_VALID_PER_CLASS} validation images in class "
            + ", ".join(f"{c.label} ({c.valid})" for c in few)
            + ": one image more or less right moves accuracy by whole points"
        )
    trained = [c for c in counts if c.train]
    if trained:
        large = max(trained, key=lambda c: c.train)
        small = min(trained, key=lambda c: c.train)
        if large.train > MAX_IMBALANCE * small.train:
            reasons.append(
                f"classes are heavily imbalanced: {large.label} has {large.train} training "
                f"images, {small.label} {small.train} (over {MAX_IMBALANCE:g}x): accuracy "
                "mostly measures the large classes"
            )
    return reasons


def checked_dataset(dataset: Dataset, need_valid: bool = True) -> list[str]:
    """Refuse an unusable dataset (:class:`DatasetUnusable`, which names the classes and
    their counts); otherwise return the warnings about its numbers (maybe none)."""
    counts = class_counts(dataset)
    reasons = unusable_reasons(counts, need_valid)
    if reasons:
        raise DatasetUnusable(
            f"Dataset {dataset.manifest_path} cannot make a classifier: {'; '.join(reasons)}. "
            f"Classes found: {describe(counts)}. Add images (at least 2 per class, "
            f"{MIN_VALID_PER_CLASS * 5} or more per class for numbers worth reading) and ingest "
            "again."
        )
    return unreliable_reasons(counts)


@task(name="check-dataset", cache_policy=NONE)
def check_dataset_task(dataset: Dataset, need_valid: bool = True) -> list[str]:
    """:func:`checked_dataset`, published: a refusal or the warnings go to the flow's log and
    a Prefect artifact before the flow goes on (or fails)."""
    try:
        warnings = checked_dataset(dataset, need_valid)
    except DatasetUnusable as exc:
        print(f"refused: {exc}")
        create_markdown_artifact(
            f"# Dataset refused\n\n{exc}\n", key="dataset-check", description="Dataset refused"
        )
        raise
    if warnings:
        for w in warnings:
            print(f"warning: {w}")
        create_markdown_artifact(
            "# Dataset warnings\n\n" + "\n".join(f"- {w}" for w in warnings) + "\n",
            key="dataset-check",
            description="Numbers to read with care",
        )
    return warnings
