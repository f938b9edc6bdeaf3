"""The cleaning ledger in the pipeline: the next ingest applies the reviewers' decisions, and
the runs that use the resulting dataset record which ledger they came from.

The file format (append-only JSON lines, undo as an appended reversal, CSV view) lives in
:mod:`ursa.ledger`, which the review page imports too; this module builds on it.

A decision is about a picture, not about one copy of it: it applies to the image's whole
duplicate group, so that removing an image does not let its near-duplicate take its place,
and relabelling one image of a label conflict (the same picture under two classes) settles
the conflict.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from tasks.manifest import Dataset, ImageRow
from ursa.ledger import KEEP, RELABEL, REMOVE, Entry, effective, read_ledger

REMOVED = "removed"


@dataclass(frozen=True)
class Ledger:
    """The decisions in force, read once, with the path and digest of what was read."""

    path: str
    digest: str  # sha256 of the ledger's complete lines ("" when there is no file)
    decisions: dict[str, Entry]  # sha256 -> the decision in force

    @property
    def empty(self) -> bool:
        return not self.decisions


def load_ledger(path: Path) -> Ledger:
    """The ledger at ``path`` (an absent file is an empty ledger)."""
    entries, digest = read_ledger(Path(path))
    return Ledger(path=str(Path(path).resolve()), digest=digest, decisions=effective(entries))


def apply_ledger(rows: list[ImageRow], decisions: Mapping[str, Entry]) -> list[ImageRow]:
    """The dataset rows with the decisions applied, one duplicate group at a time.

    ``rows`` carry their ``group`` (dedup has marked them). Per group, the latest decision
    about any member applies to every member: ``remove`` sets status ``removed`` (out of the
    dataset, kept in the manifest with its reason); ``relabel:<class>`` moves the rows to the
    class, merging rows that now repeat an (image, label); ``keep`` is only noted. Rows
    without a decision come back unchanged. The caller marks relabelled groups again.
    """
    groups: dict[str, list[ImageRow]] = defaultdict(list)
    for r in rows:
        groups[r.group or r.sha256].append(r)
    out: list[ImageRow] = []
    for members in groups.values():
        found = [decisions[r.sha256] for r in members if r.sha256 in decisions]
        if not found:
            out += members
            continue
        decision = max(found, key=lambda e: e.at)
        out += _decided(members, decision)
    return out


def _decided(members: list[ImageRow], decision: Entry) -> list[ImageRow]:
    if decision.action == KEEP:
        return [replace(r, review=KEEP) for r in members]
    if decision.action == REMOVE:
        return [
            replace(r, status=REMOVED, split="", duplicate_of="", review=REMOVE) for r in members
        ]
    assert decision.action == RELABEL, decision
    moved: dict[tuple[str, str], ImageRow] = {}
    for r in sorted(members, key=lambda r: r.url):  # of repeats, keep the smallest URL
        row = replace(r, label=decision.label, review=f"{RELABEL}:{r.label}->{decision.label}")
        moved.setdefault((row.sha256, row.label), row)
    return list(moved.values())


def ledger_params(dataset: Dataset) -> dict[str, str]:
    """What an MLflow run records about the ledger its dataset was built with."""
    return {
        "ledger_path": dataset.ledger_path or "none",
        "ledger_digest": dataset.ledger_digest or "none",
    }
