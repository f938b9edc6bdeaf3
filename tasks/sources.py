"""Where the rows come from: URL lists (``<class>.txt``), CSV files with a ``url`` column,
or a folder of images per class (nothing to download). The embedded default is published by
a local image host (:func:`standins.imagehost.embedded_url_lists`), which the ingest flow
starts: this module only reads."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from tasks.manifest import UrlRow
from tasks.url_lists import iter_url_lists
from ursa.files import write_new_file
from ursa.images import sniff_extension
from ursa.layout import Layout

EMBEDDED = "embedded"


def read_source(path: str | Path, data_dir: Path, max_per_class: int | None = None) -> list[UrlRow]:
    """:func:`iter_source` as a list."""
    return list(iter_source(path, data_dir, max_per_class))


def iter_source(
    path: str | Path, data_dir: Path, max_per_class: int | None = None
) -> Iterator[UrlRow]:
    """Rows from a path, by what it holds, one at a time (a missing or empty source raises
    here, before any row is read):

    - a ``.csv`` file, or a folder of them: a ``url`` column, the label from a ``label``
      column or else the file name;
    - a ``.txt`` file, or a folder of them: one URL per line, the label from the file name;
    - a folder of class folders of images: no download; each file is copied into ``raw/``
      by content and its row is ``ok`` already (or ``empty``/``not_image``).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"URL list source '{path}' does not exist: give a folder of <class>.txt files, "
            f"one such file, or '{EMBEDDED}'."
        )
    if path.is_file():
        rows = iter_csv_urls(path) if path.suffix.lower() == ".csv" else iter_url_lists(path)
        return limit_per_class(rows, max_per_class)
    csvs = sorted(path.glob("*.csv"))
    if csvs:
        rows = (r for f in csvs for r in iter_csv_urls(f))
        return limit_per_class(rows, max_per_class)
    if any(path.glob("*.txt")):
        return limit_per_class(iter_url_lists(path), max_per_class)
    classes = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise FileNotFoundError(
            f"Source folder {path} holds no <class>.txt URL lists, no .csv files and no "
            f"class folders of images."
        )
    return _local_rows(path, data_dir, max_per_class)


def read_csv_urls(path: Path) -> list[UrlRow]:
    """:func:`iter_csv_urls` as a list."""
    return list(iter_csv_urls(path))


def iter_csv_urls(path: Path) -> Iterator[UrlRow]:
    """Rows from a CSV with a ``url`` column (and maybe ``label``); blank URLs are skipped."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        if "url" not in columns:
            raise ValueError(f"CSV {path} has no 'url' column (columns: {reader.fieldnames}).")
        for line, raw in enumerate(reader, start=2):
            record = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            if not record.get("url"):
                continue
            label = record.get("label") or path.stem
            if not label:
                raise ValueError(f"CSV {path}, line {line}: empty label.")
            yield UrlRow(url=record["url"], label=label)


def local_image_rows(root: Path, data_dir: Path, max_per_class: int | None = None) -> list[UrlRow]:
    """One settled row per file of ``root/<class>/``: copied into ``raw/`` by content.

    The URL is the file's ``file://`` URI, so the manifest says where each image came from.
    Files are taken in name order, at most ``max_per_class`` per class.
    """
    return list(_local_rows(root, data_dir, max_per_class))


def _local_rows(root: Path, data_dir: Path, max_per_class: int | None) -> Iterator[UrlRow]:
    raw_dir = Layout(data_dir).raw
    raw_dir.mkdir(parents=True, exist_ok=True)
    for folder in sorted(d for d in Path(root).iterdir() if d.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
        for file in files[:max_per_class]:
            yield local_file_row(file.resolve(), folder.name, raw_dir)


def local_file_row(file: Path, label: str, raw_dir: Path) -> UrlRow:
    data = file.read_bytes()
    row = UrlRow(url=file.as_uri(), label=label, attempts=0)
    if not data:
        row.outcome, row.reason = "empty", "Zero-byte file"
        return row
    ext = sniff_extension(data[:16])
    if ext is None:
        row.outcome, row.reason = "not_image", f"Not an image: starts with {data[:16]!r}"
        return row
    sha = hashlib.sha256(data).hexdigest()
    write_new_file(raw_dir / f"{sha}.{ext}", data)
    row.outcome, row.reason = "ok", f"{len(data)} bytes, local file"
    row.sha256, row.raw_path = sha, f"raw/{sha}.{ext}"
    return row


def limit_per_class(rows: Iterable[UrlRow], max_per_class: int | None) -> Iterator[UrlRow]:
    """The first ``max_per_class`` URLs of each class, in list order (None: all of them)."""
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1 or None, got {max_per_class}.")
    return iter(rows) if max_per_class is None else _first_per_class(rows, max_per_class)


def _first_per_class(rows: Iterable[UrlRow], max_per_class: int) -> Iterator[UrlRow]:
    taken: Counter[str] = Counter()  # per class: memory grows with the classes, not the URLs
    for row in rows:
        if taken[row.label] < max_per_class:
            taken[row.label] += 1
            yield row
