"""The manifests: one row per URL (what happened to it), one row per image (the dataset).

Both are CSV so that people can read them with pandas; both are written atomically
(temporary file + rename) so that a crash never leaves half a manifest.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from ursa.files import atomic_write_text, atomic_writer
from ursa.layout import Layout

# Outcomes of a URL. ``ok`` is the only one that yields an image.
OK = "ok"
DOWNLOAD_OUTCOMES = (
    "ok",
    "invalid_url",  # not http(s) or malformed; nothing fetched
    "duplicate_url",  # the same URL already appeared (same or other class); fetched once
    "http_error",  # a 4xx/5xx that did not recover
    "timeout",  # the per-URL deadline ran out
    "connection_error",  # refused, reset, DNS, TLS, too many redirects
    "too_large",  # body went over the byte cap (reading stopped early)
    "empty",  # zero-byte body
    "not_image",  # HTML/JSON/SVG/text where an image was promised
)
VERIFY_OUTCOMES = (
    "corrupt",  # does not decode fully (truncated, garbage)
    "too_many_pixels",  # decompression-bomb guard
    "too_small",  # below the minimum side
)


@dataclass
class UrlRow:
    """What happened to one URL, from download through verification."""

    url: str
    label: str
    outcome: str = ""
    reason: str = ""
    http_status: int | None = None
    attempts: int = 0
    sha256: str = ""  # of the downloaded bytes
    raw_path: str = ""  # relative to the data dir
    image_path: str = ""  # the verified RGB image, relative to the data dir
    width: int | None = None
    height: int | None = None
    pixel_hash: str = ""  # sha256 of the decoded RGB pixels (set by verification)
    phash: str = ""  # 64-bit perceptual hash, 16 hex digits (set by verification)


def with_outcome(row: UrlRow, outcome: str, reason: str, **fields: object) -> UrlRow:
    """``row`` with a download outcome and its reason; what a fetch records (status,
    attempts, hash, file) is cleared unless given in ``fields``."""
    values: dict[str, object] = {
        "http_status": None,
        "attempts": 0,
        "sha256": "",
        "raw_path": "",
        **fields,
    }
    return dataclasses.replace(row, outcome=outcome, reason=reason, **values)


@dataclass
class ImageRow:
    """One verified image and its fate in the dataset."""

    sha256: str  # of the downloaded bytes (the file's name)
    image_path: str  # relative to the data dir
    label: str
    url: str
    width: int
    height: int
    pixel_hash: str  # sha256 of the decoded RGB pixels: exact duplicates across encodings
    phash: str  # 64-bit perceptual hash, 16 hex digits
    group: str  # duplicate group id (sha256 of the kept member)
    status: str = "kept"  # kept | duplicate | near_duplicate | label_conflict | removed
    duplicate_of: str = ""  # sha256 of the kept member when not kept
    split: str = ""  # train | valid, for kept rows
    review: str = ""  # the cleaning ledger's decision: keep | remove | relabel:<was>-><now>
    source: str = ""  # "feedback": a person's corrected answer (tasks/feedback.py); else ""


Row = TypeVar("Row", UrlRow, ImageRow)


@contextlib.contextmanager
def data_dir_lock(data_dir: Path, what: str) -> Iterator[None]:
    """Hold the data folder's ingest lock; fail at once, naming the folder, if it is held.

    While it is held nobody else writes downloads or images there, so temporary files left
    in them belong to a killed run and may be removed. The kernel drops the lock when its
    holder dies, SIGKILL included, so a crash never leaves the folder locked.
    """
    path = Layout(data_dir).ingest_lock
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"Cannot {what}: another ingest is writing to data folder {data_dir} "
                f"(lock {path} is held)."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def write_rows(path: Path, rows: Iterable[Row], row_type: type[Row]) -> Path:
    """Write a manifest atomically, row by row: a long one is never held in memory as text."""
    names = [f.name for f in fields(row_type)]
    with atomic_writer(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            # vars(), not dataclasses.asdict: the fields are plain values, and asdict
            # deep-copies each one.
            writer.writerow({k: ("" if v is None else v) for k, v in vars(row).items()})
    return path


def read_rows(path: Path, row_type: type[Row]) -> list[Row]:
    return list(iter_rows(path, row_type))


def iter_rows(path: Path, row_type: type[Row]) -> Iterator[Row]:
    """The rows of a manifest one at a time: memory stays flat however long the file is."""
    types = {f.name: f.type for f in fields(row_type)}
    ints = {name for name, kind in types.items() if "int" in str(kind)}
    with open(path, newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            values: dict[str, Any] = {}
            for key, text in raw.items():
                if key not in types:
                    continue
                if key in ints:
                    values[key] = int(text) if text not in ("", None) else None
                else:
                    values[key] = text
            yield row_type(**values)


@dataclass(frozen=True)
class Dataset:
    """A dataset is a manifest plus its digest; this small record is what travels between tasks."""

    manifest_path: str  # absolute path to dataset.csv
    digest: str
    classes: tuple[str, ...]
    n_train: int
    n_valid: int
    # The cleaning ledger the dataset was built with (tasks/ledger.py): path and digest of the
    # decisions read, "" when there was none.
    ledger_path: str = ""
    ledger_digest: str = ""

    @property
    def data_dir(self) -> Path:
        return Layout.around(self.manifest_path).root


def dataset_digest(rows: Iterable[ImageRow]) -> str:
    """Content digest of the kept images, their labels and splits: same inputs, same digest."""
    h = hashlib.sha256()
    for r in sorted((r for r in rows if r.status == "kept"), key=lambda r: r.sha256):
        h.update(f"{r.sha256}\t{r.pixel_hash}\t{r.label}\t{r.split}\n".encode())
    return h.hexdigest()


def write_dataset(
    data_dir: Path,
    rows: list[ImageRow],
    name: str = "dataset",
    ledger_path: str = "",
    ledger_digest: str = "",
) -> Dataset:
    """Write ``<data_dir>/datasets/<name>.csv`` and its JSON summary; return the record."""
    kept = [r for r in rows if r.status == "kept"]
    digest = dataset_digest(rows)
    path = write_rows(Layout(data_dir).dataset_manifest(name), rows, ImageRow)
    ds = Dataset(
        manifest_path=str(path.resolve()),
        digest=digest,
        classes=tuple(sorted({r.label for r in kept})),
        n_train=sum(r.split == "train" for r in kept),
        n_valid=sum(r.split == "valid" for r in kept),
        ledger_path=ledger_path,
        ledger_digest=ledger_digest,
    )
    atomic_write_text(path.with_suffix(".json"), json.dumps(dataclasses.asdict(ds), indent=2))
    return ds


def load_dataset(manifest_path: str | Path) -> Dataset:
    data = json.loads(Path(manifest_path).with_suffix(".json").read_text())
    data["classes"] = tuple(data["classes"])
    return Dataset(**data)
