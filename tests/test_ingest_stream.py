"""The ingest stages from file to file, a chunk at a time: the chunk size changes nothing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from standins.imagehost import ImageHost
from tasks.dedup import build_dataset, dedup_manifest
from tasks.download import DownloadOptions, download_manifest, download_urls
from tasks.manifest import ImageRow, UrlRow, read_rows, write_rows
from tasks.url_lists import read_url_lists
from tasks.verify import verify_manifest, verify_rows

OPTIONS = DownloadOptions(concurrency=8, per_host=8)


def test_stages_in_chunks_of_7_write_what_one_chunk_writes(host: ImageHost, tmp_path: Path) -> None:
    lists = host.write_url_lists(tmp_path / "lists", max_per_class=5, junk=False)
    zeros, ones = (lists / "0.txt").read_text().split(), (lists / "1.txt").read_text().split()
    # Across chunk boundaries: URLs listed again under another label (fetched once), a copy of
    # an image under another URL (the same file twice: verified twice, one duplicate group),
    # and a URL that is never fetched.
    extra = [*ones[:2], f"{zeros[0]}?copy=1", "ftp://example.com/a.png"]
    (lists / "0.txt").write_text("\n".join(zeros + extra) + "\n")
    listed = write_rows(tmp_path / "listed.csv", read_url_lists(lists), UrlRow)
    assert len(read_rows(listed, UrlRow)) == 54

    written = {}
    for chunk in (7, 10_000):
        data = tmp_path / f"chunks-of-{chunk}"
        downloaded = download_manifest(listed, data, data / "down.csv", OPTIONS, chunk_rows=chunk)
        urls = verify_manifest(downloaded, data, data / "urls.csv", workers=1, chunk_rows=chunk)
        dataset = dedup_manifest(urls, data)
        written[chunk] = [p.read_text() for p in (downloaded, urls, Path(dataset.manifest_path))]
        written[chunk].append(dataset.digest)
    assert written[7] == written[10_000]

    rows = read_rows(tmp_path / "chunks-of-7" / "urls.csv", UrlRow)
    assert [(r.url, r.label) for r in rows] == [(r.url, r.label) for r in read_rows(listed, UrlRow)]
    assert Counter(r.outcome for r in rows) == {"ok": 51, "duplicate_url": 2, "invalid_url": 1}
    images = read_rows(Path(dataset.manifest_path), ImageRow)
    # The copy is the same file under the same label: one image row for both URLs.
    assert len(images) == len({(r.sha256, r.label) for r in rows if r.outcome == "ok"}) == 50

    # The functions on lists give the same rows and the same dataset.
    data = tmp_path / "lists-api"
    verified = verify_rows(download_urls(read_rows(listed, UrlRow), data, OPTIONS), data)
    assert verified == rows
    assert build_dataset(verified, data).digest == dataset.digest
