"""The downloader against a real local image host: every junk kind ends as it should."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import socket
import time
import urllib.parse
from pathlib import Path

import pytest

from standins.imagehost import ImageHost
from tasks.download import (
    DownloadOptions,
    download_task,
    download_urls,
    download_urls_async,
)
from tasks.manifest import DOWNLOAD_OUTCOMES, UrlRow
from tasks.url_lists import read_url_lists

# Small deadlines so that the slow URL (30 s on the host) times out fast.
FAST = DownloadOptions(timeout_s=2.0, attempt_timeout_s=1.5, backoff_s=0.05)


def leftovers(data_dir: Path) -> list[Path]:
    """Anything in raw/ that is not a finished content-addressed file."""
    return [p for p in (data_dir / "raw").iterdir() if p.name.startswith(".") or "tmp" in p.name]


def test_every_junk_kind_ends_with_its_outcome(
    host: ImageHost, data_dir: Path, tmp_path: Path
) -> None:
    rows = read_url_lists(host.write_url_lists(tmp_path / "lists", max_per_class=3))
    seen: list[UrlRow] = []

    out = download_urls(rows, data_dir, FAST, progress=seen.append)

    # One output row per input row, same order, inputs untouched.
    assert [(r.url, r.label) for r in out] == [(r.url, r.label) for r in rows]
    assert all(r.outcome == "" for r in rows)
    assert len(seen) == len(rows) and sorted(map(id, seen)) == sorted(map(id, out))
    assert all(r.outcome in DOWNLOAD_OUTCOMES and r.reason for r in out)

    expected = host.expected_outcomes()
    first_rows: set[str] = set()
    for row in out:
        if row.url in first_rows:
            want = "duplicate_url"
        else:
            first_rows.add(row.url)
            want = "ok" if expected.get(row.url) == "duplicate_url" else expected.get(row.url, "ok")
        assert row.outcome == want, row

    kinds = {j.kind: j.url for j in host.junk()}
    by_url = {r.url: r for r in out if r.outcome != "duplicate_url"}
    assert by_url[kinds["flaky"]].attempts == 2
    assert by_url[kinds["missing"]].attempts == 1  # a 404 is not retried
    assert by_url[kinds["missing"]].http_status == 404
    assert "text/html" in by_url[kinds["html"]].reason
    dup = next(r for r in out if r.outcome == "duplicate_url")
    assert f"label '{dup.label}'" in dup.reason and dup.attempts == 0
    # The truncated JPEG downloads fine; verification is what rejects it.
    assert by_url[kinds["truncated_jpeg"]].raw_path.endswith(".jpg")

    ok = [r for r in out if r.outcome == "ok"]
    assert len(ok) >= 30
    for row in ok:
        path = data_dir / row.raw_path
        assert path.name.split(".")[0] == row.sha256
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256
        assert row.http_status == 200 and row.attempts >= 1
    # Exact copies (same or other class) share their source's content-addressed file.
    for kind in ("exact_copy", "label_conflict"):
        junk = next(j for j in host.junk() if j.kind == kind)
        assert by_url[junk.url].raw_path == by_url[junk.source].raw_path
    assert leftovers(data_dir) == []


def test_invalid_urls_are_not_fetched(data_dir: Path) -> None:
    bad = [
        "file:///etc/passwd",
        "ftp://example.com/a.jpg",
        "data:image/png;base64,iVBORw0KGgo=",
        "not a url",
        "http://",
        "https://exa mple.com/a.jpg",
        "http://example.com:99999/a.jpg",
        "",
    ]
    out = download_urls([UrlRow(url=u, label="x") for u in bad], data_dir, FAST)
    assert [r.outcome for r in out] == ["invalid_url"] * len(bad)
    assert all(r.attempts == 0 and r.reason for r in out)
    assert "ftp" in out[1].reason


def test_byte_cap_stops_reading_early(host: ImageHost, data_dir: Path) -> None:
    # The body never ends: a downloader that did not stop at the cap would hit the deadline
    # (outcome timeout) instead.
    options = DownloadOptions(timeout_s=5.0, max_bytes=200_000)
    [row] = download_urls([UrlRow(f"{host.base_url}/endless.png", "x")], data_dir, options)
    assert row.outcome == "too_large", row
    assert "200000" in row.reason

    small = DownloadOptions(timeout_s=5.0, max_bytes=100)
    [row] = download_urls([UrlRow(f"{host.base_url}/img/0/0000.png", "0")], data_dir, small)
    assert row.outcome == "too_large" and row.raw_path == ""
    assert leftovers(data_dir) == [] and list((data_dir / "raw").iterdir()) == []


def test_cancelled_download_leaves_no_partial_file(host: ImageHost, data_dir: Path) -> None:
    # Cancelled mid-body (as Ctrl-C or a flow timeout would): the temporary file goes too.
    rows = [UrlRow(f"{host.base_url}/endless.png", "x")]
    options = DownloadOptions(timeout_s=30.0, max_bytes=10**12)

    async def cancel_soon() -> None:
        task = asyncio.create_task(download_urls_async(rows, data_dir, options))
        while not list((data_dir / "raw").glob(".part-*")):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(cancel_soon(), timeout=10))
    assert leftovers(data_dir) == []


def test_per_host_limit_bounds_parallel_requests(digits: Path, data_dir: Path) -> None:
    with ImageHost(digits, latency_s=0.2) as slow_host:
        rows = [UrlRow(f"{slow_host.base_url}/img/0/{i:04d}.png", "0") for i in (0, 10, 20, 30)]
        rows += [UrlRow(f"{slow_host.base_url}/img/1/{i:04d}.png", "1") for i in (1, 11, 21, 42)]
        out = download_urls(rows, data_dir, DownloadOptions(per_host=2))
        assert all(r.outcome == "ok" for r in out), out
        # Counted by the host itself: never more than two of ours at a time.
        assert slow_host.peak_in_flight == 2
        assert slow_host.user_agents() == {DownloadOptions().user_agent}
        assert "Ursa/" in DownloadOptions().user_agent


def test_concurrency_limits_requests_in_flight_over_all_hosts(digits: Path, data_dir: Path) -> None:
    # One server under two host names: two per-host slots each would allow four at a time.
    with ImageHost(digits, latency_s=0.2) as slow_host:
        port = slow_host.base_url.rsplit(":", 1)[1]
        rows = [
            UrlRow(f"http://{name}:{port}/img/0/{i:04d}.png", "0")
            for name in ("127.0.0.1", "localhost")
            for i in (0, 10, 20, 30)
        ]
        out = download_urls(rows, data_dir, DownloadOptions(concurrency=3, per_host=2))
        assert all(r.outcome == "ok" for r in out), out
        assert slow_host.peak_in_flight == 3


def test_retry_after_is_honoured_when_it_fits(host: ImageHost, data_dir: Path) -> None:
    fits = f"{host.base_url}/flaky/0/0000.png?status=503&retry_after=1"
    started = time.perf_counter()
    [row] = download_urls([UrlRow(fits, "0")], data_dir, DownloadOptions(timeout_s=5.0))
    assert (row.outcome, row.attempts) == ("ok", 2)
    assert time.perf_counter() - started >= 1.0

    # A Retry-After past the deadline ends the row at once with what is known.
    too_long = f"{host.base_url}/flaky/0/0000.png?status=503&retry_after=30"
    started = time.perf_counter()
    [row] = download_urls([UrlRow(too_long, "0")], data_dir, FAST)
    assert (row.outcome, row.http_status, row.attempts) == ("http_error", 503, 1)
    assert time.perf_counter() - started < 1.5


def http_date(seconds_from_now: float) -> str:
    """``Retry-After``'s other form, URL-quoted for the image host's query string."""
    when = email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)
    return urllib.parse.quote(when)


def test_retry_after_as_an_http_date_is_honoured_when_it_fits(
    host: ImageHost, data_dir: Path
) -> None:
    # Whole seconds only: a date 3 s ahead is 2 to 3 s away; the backoff alone waits 0.05 s.
    fits = f"{host.base_url}/flaky/0/0000.png?status=503&retry_after={http_date(3)}"
    options = DownloadOptions(timeout_s=8.0, attempt_timeout_s=1.5, backoff_s=0.05)
    started = time.perf_counter()
    [row] = download_urls([UrlRow(fits, "0")], data_dir, options)
    assert (row.outcome, row.attempts) == ("ok", 2)
    assert time.perf_counter() - started >= 1.5  # it waited for the date, not the backoff

    too_late = f"{host.base_url}/flaky/1/0001.png?status=503&retry_after={http_date(60)}"
    [row] = download_urls([UrlRow(too_late, "1")], data_dir, options)
    assert (row.outcome, row.http_status, row.attempts) == ("http_error", 503, 1)
    assert "does not fit" in row.reason


def test_429_is_retried_and_persistent_5xx_gives_up(host: ImageHost, data_dir: Path) -> None:
    rows = [
        UrlRow(f"{host.base_url}/flaky/1/0001.png?status=429&times=2", "1"),
        UrlRow(f"{host.base_url}/flaky/2/0002.png?times=99", "2"),
    ]
    throttled, broken = download_urls(rows, data_dir, FAST)
    assert (throttled.outcome, throttled.attempts) == ("ok", 3)
    assert (broken.outcome, broken.http_status) == ("http_error", 500)
    assert broken.attempts == FAST.retries + 1


def test_connection_refused_is_a_connection_error(data_dir: Path) -> None:
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    [row] = download_urls([UrlRow(f"http://127.0.0.1:{port}/a.png", "x")], data_dir, FAST)
    assert row.outcome == "connection_error", row
    assert "Error" in row.reason and row.attempts == FAST.retries + 1


def test_slow_attempts_time_out_within_the_deadline(host: ImageHost, data_dir: Path) -> None:
    # Retries enough for 30 s of 0.3 s attempts: only the 1 s deadline over all of them stops
    # it after a few.
    options = DownloadOptions(timeout_s=1.0, attempt_timeout_s=0.3, backoff_s=0.05, retries=100)
    [row] = download_urls([UrlRow(f"{host.base_url}/slow/0/0000.png", "0")], data_dir, options)
    assert row.outcome == "timeout" and 2 <= row.attempts <= 5, row
    assert "deadline" in row.reason


def test_options_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="max_bytes.*-1"):
        DownloadOptions(max_bytes=-1)


def test_prefect_task_wraps_the_plain_function() -> None:
    assert download_task.name == "download"
    assert download_task.retries == 0  # retries live per URL, inside the deadline
