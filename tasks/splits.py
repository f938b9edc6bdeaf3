"""Who goes where: the train/valid split of a dataset and the folds of cross-validation.

Both cut the same way, per label, whole duplicate groups at a time (a picture and its near
copies on both sides would measure memory, not generalisation), in an order drawn from a
seeded hash of the group ids: deterministic for a seed, independent of the rows' order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from tasks.manifest import ImageRow


def groups_by_label(rows: Sequence[ImageRow], seed: int) -> dict[str, list[str]]:
    """Per label, its duplicate groups in seeded-hash order."""
    found: dict[str, set[str]] = {}
    for r in rows:
        found.setdefault(r.label, set()).add(r.group)
    return {
        label: sorted(groups, key=lambda g: group_rank(g, seed)) for label, groups in found.items()
    }


def group_rank(group: str, seed: int) -> str:
    """Where a duplicate group comes in its label's seeded order (smallest first)."""
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def valid_group_count(n_groups: int, valid_pct: float) -> int:
    """Groups of one label that go to validation: ``valid_pct`` of them, rounded, but at
    least one and never all of them once a label has two groups, so that every class is both
    learnt and measured (20% of 2 groups rounds to none)."""
    if n_groups < 2 or valid_pct <= 0:
        return 0
    return min(max(round(valid_pct * n_groups), 1), n_groups - 1)


def assign_split(kept: Sequence[ImageRow], valid_pct: float, seed: int) -> None:
    """Set ``split`` ("train" or "valid") on every kept row: stratified by label, whole groups,
    the first groups of each label's seeded order to validation."""
    split_of: dict[tuple[str, str], str] = {}
    for label, groups in groups_by_label(kept, seed).items():
        n_valid = valid_group_count(len(groups), valid_pct)
        for k, g in enumerate(groups):
            split_of[(label, g)] = "valid" if k < n_valid else "train"
    for r in kept:
        r.split = split_of[(r.label, r.group)]


def fold_of(rows: Sequence[ImageRow], folds: int, seed: int = 0) -> np.ndarray:
    """Fold number per row: stratified by label (each label's groups dealt round the folds in
    seeded order), deterministic, and a whole duplicate group always in one fold."""
    if folds < 2:
        raise ValueError(f"folds is {folds}; k-fold needs at least 2.")
    fold_of_group = {
        (label, g): k % folds
        for label, groups in groups_by_label(rows, seed).items()
        for k, g in enumerate(groups)
    }
    return np.array([fold_of_group[(r.label, r.group)] for r in rows], dtype=np.int64)
