"""Resume: a download killed with SIGKILL half-way and run again fetches no settled URL twice.

The download runs in a real subprocess against the real image host (with latency, so that
the kill lands mid-run); the host's request counters say what was fetched how often.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from standins.imagehost import ImageHost
from tasks.download import DownloadOptions, download_manifest, download_urls
from tasks.manifest import UrlRow, data_dir_lock, read_rows, write_rows
from tasks.url_lists import read_url_lists
from ursa.embedded import write_embedded_images
from ursa.layout import Layout

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import sys
from pathlib import Path
from tasks.download import DownloadOptions, download_urls
from tasks.url_lists import read_url_lists
rows = read_url_lists(Path(sys.argv[1]))
download_urls(rows, Path(sys.argv[2]), DownloadOptions(concurrency=4, per_host=4))
"""


@pytest.fixture
def slow_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageHost]:
    digits = write_embedded_images(tmp_path_factory.getbasetemp() / "digits")
    with ImageHost(digits, latency_s=0.1) as host:
        yield host


def journal_urls(data_dir: Path) -> list[str]:
    urls = []
    for line in (Layout(data_dir).journal).read_text(encoding="utf-8").splitlines():
        try:
            urls.append(json.loads(line)["url"])
        except ValueError:
            pass
    return urls


def test_sigkill_half_way_then_rerun(slow_host: ImageHost, data_dir: Path, tmp_path: Path) -> None:
    lists = slow_host.write_url_lists(tmp_path / "lists", max_per_class=10, junk=False)
    (lists / "0.txt").write_text(
        (lists / "0.txt").read_text() + f"{slow_host.base_url}/img/0/gone.png\n"
    )
    rows = read_url_lists(lists)
    assert len(rows) == 101

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(lists), str(data_dir)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        journal = Layout(data_dir).journal
        deadline = time.monotonic() + 60
        while not (journal.exists() and len(journal.read_text().splitlines()) >= 30):
            assert child.poll() is None, "the download finished before it could be killed"
            assert time.monotonic() < deadline, "the download never got going"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()

    before = journal_urls(data_dir)
    assert 30 <= len(before) < len(rows), "killed half-way, not at the start or the end"
    fetched_before = sum(slow_host.request_counts().values())
    # A kill can cut the last line short: simulate the worst case.
    with open(Layout(data_dir).journal, "a", encoding="utf-8") as fh:
        fh.write('{"url": "http://127.0.0.1/cut-sh')
    # And the temporary file that a kill in the middle of a spilled body leaves behind (this
    # kill rarely lands there): the next run removes it.
    (data_dir / "raw" / ".part-killed.tmp").write_bytes(b"half a body")

    out = download_urls(rows, data_dir, DownloadOptions(concurrency=8, per_host=8))

    # The manifest is complete: every URL has its outcome.
    assert [r.url for r in out] == [r.url for r in rows]
    assert [r.outcome for r in out].count("ok") == 100
    gone = out[[r.url for r in rows].index(f"{slow_host.base_url}/img/0/gone.png")]
    assert (gone.outcome, gone.http_status) == ("http_error", 404)
    # No URL settled before the kill was fetched again; the rest at most twice (in flight).
    for url in before:
        assert slow_host.requests_for(url) == 1, url
    for row in rows:
        assert 1 <= slow_host.requests_for(row.url) <= 2, row.url
    assert sum(slow_host.request_counts().values()) - fetched_before == len(rows) - len(before)
    # No partial file anywhere, every ok row's file in place, the journal compacted.
    partial = [p for p in data_dir.rglob("*") if ".part-" in p.name or p.suffix == ".tmp"]
    assert partial == []
    assert all((data_dir / r.raw_path).is_file() for r in out if r.outcome == "ok")
    assert sorted(journal_urls(data_dir)) == sorted(r.url for r in rows)

    # A third run fetches nothing at all; without resume everything is fetched again.
    counts = slow_host.request_counts()
    assert download_urls(rows, data_dir) == out
    assert slow_host.request_counts() == counts
    fresh = download_urls(rows, data_dir, DownloadOptions(concurrency=16), resume=False)
    assert [r.sha256 for r in fresh] == [r.sha256 for r in out]
    assert all(slow_host.requests_for(r.url) >= 2 for r in rows)


def test_a_row_is_shown_done_only_once_its_journal_line_is_written(
    slow_host: ImageHost, data_dir: Path
) -> None:
    rows = [_row(f"{slow_host.base_url}/img/0/{i:04d}.png") for i in range(0, 100, 10)]
    rows.append(_row(f"{slow_host.base_url}/img/0/gone.png"))  # a final answer too: a 404
    shown, unwritten = [], []

    def progress(row: UrlRow) -> None:  # reads the file, as a run after a kill would
        shown.append(row.url)
        if row.url not in journal_urls(data_dir):
            unwritten.append(row.url)

    download_urls(rows, data_dir, DownloadOptions(concurrency=4), progress=progress)
    assert sorted(shown) == sorted(r.url for r in rows)
    assert unwritten == []


def test_transient_failures_are_tried_again_on_resume(slow_host: ImageHost, data_dir: Path) -> None:
    # 5xx and throttling (408, 425, 429) may pass on a later run; a 404 is final.
    statuses = [503, 408, 425, 429]
    files = ["0001.png", "0011.png", "0021.png", "0042.png"]  # digits labelled 1
    urls = [
        f"{slow_host.base_url}/flaky/1/{name}?status={status}&times=1"
        for name, status in zip(files, statuses, strict=True)
    ]
    urls.append(f"{slow_host.base_url}/img/1/gone.png")
    options = DownloadOptions(retries=0)
    first = download_urls([_row(url) for url in urls], data_dir, options)
    assert [(r.outcome, r.http_status) for r in first] == [
        ("http_error", status) for status in [*statuses, 404]
    ]
    second = download_urls([_row(url) for url in urls], data_dir, options)
    assert [r.outcome for r in second] == ["ok"] * 4 + ["http_error"]
    assert [slow_host.requests_for(url) for url in urls] == [2, 2, 2, 2, 1]


def test_a_second_ingest_on_the_same_folder_is_refused(data_dir: Path) -> None:
    with data_dir_lock(data_dir, "download"):
        with pytest.raises(RuntimeError, match=f"another ingest.*{data_dir}"):
            download_urls([_row("http://127.0.0.1:9/a.png")], data_dir)
    # Released: the same call now runs (and records the refused connection).
    [row] = download_urls([_row("http://127.0.0.1:9/a.png")], data_dir, DownloadOptions(retries=0))
    assert row.outcome == "connection_error"


def _row(url: str) -> UrlRow:
    return UrlRow(url=url, label="x")


def test_a_10000_url_download_killed_half_way_resumes(
    host: ImageHost, data_dir: Path, tmp_path: Path
) -> None:
    """At scale: 10,000 URLs (tiny images, no latency), SIGKILL mid-run, then a rerun that
    reports every URL once, fetches only what the journal does not hold, and leaves one
    journal line per URL."""
    files = sorted(p.relative_to(host.image_root).as_posix() for p in host.image_root.glob("*/*"))
    lists = tmp_path / "lists"
    lists.mkdir()
    by_label: dict[str, list[str]] = {}
    for i in range(10_000):
        name = files[i % len(files)]
        by_label.setdefault(name.split("/")[0], []).append(f"{host.base_url}/img/{name}?copy={i}\n")
    for label, urls in by_label.items():
        (lists / f"{label}.txt").write_text("".join(urls))
    rows = read_url_lists(lists)
    assert len(rows) == 10_000

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(lists), str(data_dir)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        journal = Layout(data_dir).journal
        deadline = time.monotonic() + 120
        while not (journal.exists() and journal.stat().st_size > 3_000 * 200):
            assert child.poll() is None, "the download finished before it could be killed"
            assert time.monotonic() < deadline, "the download never got going"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    before = journal_urls(data_dir)
    assert 1_000 <= len(before) < 10_000, "killed half-way"
    fetched_before = sum(host.request_counts().values())

    reported: list[str] = []
    # Deadlines far above need: on a busy machine an answer may wait, and this is no timing test.
    options = DownloadOptions(concurrency=32, timeout_s=300, attempt_timeout_s=120)
    # The rerun streams from file to file as the ingest flow does, in chunks of 1,000 rows.
    listed = write_rows(tmp_path / "listed.csv", rows, UrlRow)
    target = tmp_path / "downloaded.csv"
    download_manifest(listed, data_dir, target, options, reported.append, chunk_rows=1_000)
    out = read_rows(target, UrlRow)
    assert [r.url for r in out] == [r.url for r in rows]  # in order
    failed = [r for r in out if r.outcome != "ok"]
    assert not failed and len(out) == 10_000, failed[:3]
    assert sorted(r.url for r in reported) == sorted(r.url for r in rows)  # progress: each once
    assert sum(host.request_counts().values()) - fetched_before == 10_000 - len(before)
    assert all(host.requests_for(url) == 1 for url in before)
    assert sorted(journal_urls(data_dir)) == sorted(r.url for r in rows)
