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
from collections.abc import Callable, Iterable, Iterator
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
T = TypeVar("T")


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
    with row_writer(path, row_type) as write:
        for row in rows:
            write(row)
    return path


@contextlib.contextmanager
def row_writer(path: Path, row_type: type[Row]) -> Iterator[Callable[[Row], None]]:
    """``write(row)`` for a manifest written as its rows come; it appears at ``path``, whole,
    when the block ends (and nowhere if the block raises)."""
    names = [f.name for f in fields(row_type)]
    with atomic_writer(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=names, lineterminator="\n")
        writer.writeheader()

        def write(row: Row) -> None:
            # vars(), not dataclasses.asdict: the fields are plain values, and asdict
            # deep-copies each one.
            writer.writerow({k: ("" if v is None else v) for k, v in vars(row).items()})

        yield write


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


def count_rows(path: Path) -> int:
    """How many rows a manifest holds: one pass over the file, nothing kept."""
    with open(path, newline="", encoding="utf-8") as fh:
        return max(sum(1 for _ in csv.reader(fh)) - 1, 0)


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter): how a stage works through a
    manifest in bounded memory."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}.")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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
        h.update(_digest_line(r))
    return h.hexdigest()


def _digest_line(r: ImageRow) -> bytes:
    return f"{r.sha256}\t{r.pixel_hash}\t{r.label}\t{r.split}\n".encode()


class _Kept:
    """What the dataset record says of the kept rows, gathered while they are written; with
    ``digest``, also the digest, from kept rows that must come in sha256 order."""

    def __init__(self, digest: bool) -> None:
        self.classes: set[str] = set()
        self.splits: dict[str, int] = {"train": 0, "valid": 0}
        self._hash = hashlib.sha256() if digest else None
        self._last = ""

    def passed(self, rows: Iterable[ImageRow]) -> Iterator[ImageRow]:
        for r in rows:
            if r.status == "kept":
                self.classes.add(r.label)
                if r.split in self.splits:
                    self.splits[r.split] += 1
                if self._hash is not None:
                    if r.sha256 < self._last:
                        raise ValueError(
                            f"Kept rows out of sha256 order ({r.sha256} after {self._last}): "
                            f"a stream of dataset rows is written in (sha256, label) order."
                        )
                    self._last = r.sha256
                    self._hash.update(_digest_line(r))
            yield r

    @property
    def digest(self) -> str:
        assert self._hash is not None
        return self._hash.hexdigest()


def write_dataset(
    data_dir: Path,
    rows: Iterable[ImageRow],
    name: str = "dataset",
    ledger_path: str = "",
    ledger_digest: str = "",
) -> Dataset:
    """Write ``<data_dir>/datasets/<name>.csv`` and its JSON summary; return the record.

    A list is written in its order. Any other iterable is written in one pass, never held
    whole, and its kept rows must come in sha256 order (dedup streams (sha256, label) order),
    so that the digest is taken in the same pass.
    """
    listed = isinstance(rows, list)
    kept = _Kept(digest=not listed)
    path = write_rows(Layout(data_dir).dataset_manifest(name), kept.passed(rows), ImageRow)
    ds = Dataset(
        manifest_path=str(path.resolve()),
        digest=dataset_digest(rows) if listed else kept.digest,
        classes=tuple(sorted(kept.classes)),
        n_train=kept.splits["train"],
        n_valid=kept.splits["valid"],
        ledger_path=ledger_path,
        ledger_digest=ledger_digest,
    )
    atomic_write_text(path.with_suffix(".json"), json.dumps(dataclasses.asdict(ds), indent=2))
    return ds


def load_dataset(manifest_path: str | Path) -> Dataset:
    data = json.loads(Path(manifest_path).with_suffix(".json").read_text())
    data["classes"] = tuple(data["classes"])
    return Dataset(**data)
