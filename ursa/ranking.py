"""The ranking file: images most likely mislabelled first, written by the ``clean`` flow
(``tasks/cleaning.py``) and read by the review page (``serving/review.py``).

``<data>/cleaning/ranking.csv`` holds one row per image and label, ``ranking.json`` what it
was computed from (dataset digest, classes, method). Both are written atomically (temporary
file, then rename), so the review page never reads half a ranking.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass, fields
from pathlib import Path

from ursa.files import atomic_write_text
from ursa.layout import Layout

ORDERS = ("self_confidence", "margin", "loss")


@dataclass
class RankedImage:
    rank: int  # 1 = most likely mislabelled (by self-confidence)
    sha256: str
    image_path: str  # relative to the data folder
    given: str  # the label the dataset gives it
    predicted: str  # the most probable class out of sample
    confidence: float  # probability of ``predicted``
    self_confidence: float  # probability of ``given`` (cleanlab's label quality score)
    margin: float  # p(given) - max p(other class) (cleanlab's normalized_margin, before scaling)
    loss: float  # cross-entropy of the given label, -log p(given)
    status: str  # the dataset status: kept or label_conflict
    split: str  # train | valid ("" for a label conflict)
    duplicates: int  # other members of its duplicate group (exact and near)
    flags: str  # ";"-joined: label_conflict, near_duplicates, confident_issue
    source: str  # how its probabilities were obtained: "fold k" or "ensemble of k folds"


def ranking_paths(data_dir: Path) -> tuple[Path, Path]:
    folder = Layout(data_dir).cleaning
    return folder / "ranking.csv", folder / "ranking.json"


def write_ranking(data_dir: Path, rows: list[RankedImage], meta: dict) -> Path:
    """Write the ranking (rows in rank order) and its description; return the CSV path."""
    csv_path, json_path = ranking_paths(data_dir)
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=[f.name for f in fields(RankedImage)], lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow(dataclasses.asdict(row))
    # The description first: a reader that finds the new CSV also finds its description.
    atomic_write_text(json_path, json.dumps(meta, indent=2))
    atomic_write_text(csv_path, out.getvalue())
    return csv_path


def read_ranking(data_dir: Path) -> tuple[list[RankedImage], dict]:
    """(rows in rank order, description); FileNotFoundError when no clean run wrote one."""
    csv_path, json_path = ranking_paths(data_dir)
    if not csv_path.is_file():
        raise FileNotFoundError(f"No ranking at {csv_path}: run 'ursa clean' first.")
    types = {f.name: f.type for f in fields(RankedImage)}
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            values = {}
            for key, kind in types.items():
                text = raw.get(key, "")
                values[key] = (
                    int(text) if kind == "int" else float(text) if kind == "float" else text
                )
            rows.append(RankedImage(**values))
    meta = json.loads(json_path.read_text()) if json_path.is_file() else {}
    return rows, meta


def ordered(rows: list[RankedImage], order: str) -> list[RankedImage]:
    """Rows most suspect first by ``order``: low self-confidence, low margin, or high loss.

    Loss is -log(self-confidence) of the same out-of-sample probabilities, so "loss" orders
    exactly as "self_confidence" does; it is there because lesson 2 calls it top losses.
    """
    if order == "self_confidence":
        return sorted(rows, key=lambda r: (r.self_confidence, r.rank))
    if order == "margin":
        return sorted(rows, key=lambda r: (r.margin, r.rank))
    if order == "loss":
        return sorted(rows, key=lambda r: (-r.loss, r.rank))
    raise ValueError(f"Order '{order}' is not one of {ORDERS}.")


class RankingCache:
    """The ranking file, read again only when it changes (``ursa clean`` replaces it)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._key: tuple[int, int] | None = None
        self._value: tuple[list[RankedImage], dict] = ([], {})

    def get(self) -> tuple[list[RankedImage], dict]:
        path = ranking_paths(self.data_dir)[0]
        stat = path.stat()  # FileNotFoundError: no ranking yet
        key = (stat.st_mtime_ns, stat.st_size)
        if key != self._key:
            self._value = read_ranking(self.data_dir)
            self._key = key
        return self._value
