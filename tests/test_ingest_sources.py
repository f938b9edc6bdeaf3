"""Inputs: URL lists, CSVs with a url column, and a folder of images per class."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tasks.download import download_urls
from tasks.sources import read_csv_urls, read_source
from tasks.verify import verify_rows


def test_csv_with_url_and_label_columns(tmp_path: Path) -> None:
    (tmp_path / "bears.csv").write_text(
        "\ufeffURL,Label,score\n"
        "https://a.example/1.jpg?w=200&h=100,grizzly,0.9\n"
        ",black,0.1\n"
        "https://a.example/2.jpg,,0.5\n"
        "https://a.example/3.jpg,black,0.4\n",
        encoding="utf-8",
    )
    rows = read_csv_urls(tmp_path / "bears.csv")
    assert [(r.url, r.label) for r in rows] == [
        ("https://a.example/1.jpg?w=200&h=100", "grizzly"),
        ("https://a.example/2.jpg", "bears"),  # no label: the file name
        ("https://a.example/3.jpg", "black"),
    ]
    assert [r.label for r in read_source(tmp_path, tmp_path / "data", max_per_class=1)] == [
        "grizzly",
        "bears",
        "black",
    ]
    (tmp_path / "bad.csv").write_text("link\nhttps://a.example/1.jpg\n")
    with pytest.raises(ValueError, match=r"bad.csv has no 'url' column.*link"):
        read_csv_urls(tmp_path / "bad.csv")


def test_folder_of_images_needs_no_download(digits: Path, data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for label in ("0", "1"):
        shutil.copytree(digits / label, root / label)
    (root / "1" / "notes.txt").write_text("not a picture")
    (root / "1" / "0000-empty.png").write_bytes(b"")

    rows = read_source(root, data_dir, max_per_class=5)
    assert [r.label for r in rows] == ["0"] * 5 + ["1"] * 5
    assert rows[5].outcome == "empty" and rows[5].url.startswith("file:///")
    ok = [r for r in rows if r.outcome == "ok"]
    for row in ok:
        local = Path(row.url.removeprefix("file://"))
        stored = data_dir / row.raw_path
        assert stored.read_bytes() == local.read_bytes()
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row.sha256
    all_rows = read_source(root, data_dir)
    assert any(r.outcome == "not_image" and r.url.endswith("notes.txt") for r in all_rows)

    # The downloader passes settled rows through; verification takes them as any download.
    out = verify_rows(download_urls(rows, data_dir), data_dir)
    assert [r.outcome for r in out] == [r.outcome for r in rows]
    assert all((data_dir / r.image_path).is_file() for r in out if r.outcome == "ok")
    assert all(len(r.phash) == 16 and len(r.pixel_hash) == 64 for r in out if r.outcome == "ok")


def test_source_that_holds_nothing_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no"):
        read_source(tmp_path / "empty", tmp_path / "data")
