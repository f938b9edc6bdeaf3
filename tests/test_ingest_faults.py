"""Every fault from the ingest issue, against the real local image host, in one run.

Each URL ends as a manifest row with a precise outcome, and the run goes on: one call to
download_urls takes them all, and no single URL holds it past its deadline.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from standins.imagehost import ImageHost
from tasks.download import DownloadOptions, download_urls
from tasks.manifest import DOWNLOAD_OUTCOMES, VERIFY_OUTCOMES, UrlRow
from tasks.verify import verify_rows
from tests.images import encode, png_header_only
from ursa.embedded import write_embedded_images

OPTIONS = DownloadOptions(
    timeout_s=2.0, attempt_timeout_s=1.0, backoff_s=0.05, max_bytes=1_000_000, retries=3
)
UNICODE_LABEL = "ünïcödé"


def _frames() -> list[Image.Image]:
    return [Image.new("RGB", (24, 24), c) for c in [(255, 0, 0), (0, 255, 0)]]


def _formats() -> dict[str, bytes]:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
    jpeg = encode(photo, "JPEG", quality=90)
    return {
        "cmyk.jpg": encode(Image.new("CMYK", (24, 24), (0, 255, 255, 0)), "JPEG"),
        "palette.png": encode(photo.quantize(16), "PNG"),
        "rgba.png": encode(Image.new("RGBA", (24, 24), (255, 0, 0, 128)), "PNG"),
        "gray16.png": encode(Image.fromarray(np.full((24, 24), 40000, np.uint16)), "PNG"),
        "animated.gif": encode(_frames()[0], "GIF", save_all=True, append_images=_frames()[1:]),
        "picture.webp": encode(photo, "WEBP"),
        "zz-bomb.png": png_header_only(40000, 40000),
        "zz-empty.png": b"",
        "zz-truncated.jpg": jpeg[: len(jpeg) // 2],
    }


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageHost]:
    root = tmp_path_factory.mktemp("faults")
    (root / "formats").mkdir()
    for name, data in _formats().items():
        (root / "formats" / name).write_bytes(data)
    digits = write_embedded_images(tmp_path_factory.getbasetemp() / "digits")
    (root / UNICODE_LABEL).mkdir()
    shutil.copy(digits / "3" / "0003.png", root / UNICODE_LABEL / "bär-1.png")
    (root / "0").mkdir()
    for i, src in enumerate(sorted((digits / "0").glob("*.png"))[:10]):
        shutil.copy(src, root / "0" / f"{i:04d}.png")
    with ImageHost(root) as image_host:
        yield image_host


# (path on the host, download outcome, outcome after verification, HTTP status or None)
CASES = [
    ("/status/403", "http_error", "http_error", 403),
    ("/status/404", "http_error", "http_error", 404),
    ("/status/410", "http_error", "http_error", 410),
    ("/status/429?retry_after=0.6", "http_error", "http_error", 429),
    ("/flaky/0/0000.png?status=429&times=1&retry_after=0.3", "ok", "ok", 200),
    ("/flaky/0/0001.png?status=503&times=1", "ok", "ok", 200),
    ("/flaky/0/0002.png?status=500&times=2", "ok", "ok", 200),
    ("/status/503", "http_error", "http_error", 503),
    ("/status/500", "http_error", "http_error", 500),
    ("/reset/0/0003.png", "connection_error", "connection_error", None),
    ("/drip/0/0004.png?interval=0.3", "timeout", "timeout", None),
    ("/endless.png", "too_large", "too_large", 200),
    ("/big.png?bytes=3000000", "too_large", "too_large", 200),
    ("/big.png?bytes=5000&declared=900000000", "too_large", "too_large", 200),
    ("/redirect/3?to=/img/0/0005.png", "ok", "ok", 200),
    ("/redirect/9?to=/img/0/0007.png", "ok", "ok", 200),  # ten 302s: the most followed
    ("/redirect/10?to=/img/0/0007.png", "connection_error", "connection_error", 302),  # 11
    ("/loop/a", "connection_error", "connection_error", 302),
    ("/goto?location=file:///etc/passwd", "invalid_url", "invalid_url", None),
    ("/goto?location=ftp://127.0.0.1/a.jpg", "invalid_url", "invalid_url", None),
    (f"/img/{UNICODE_LABEL}/bär-1.png", "ok", "ok", 200),
    ("/img/%C3%BCn%C3%AFc%C3%B6d%C3%A9/b%C3%A4r-1.png", "ok", "ok", 200),
    ("/img/0/0006.png?w=200&h=100&sig=a%2Bb", "ok", "ok", 200),  # query strings are kept
    ("/body/json", "not_image", "not_image", 200),
    ("/body/svg", "not_image", "not_image", 200),
    ("/body/html", "not_image", "not_image", 200),
    ("/page/cat.jpg", "not_image", "not_image", 200),
    ("/img/formats/zz-empty.png", "empty", "empty", 200),
    ("/img/formats/zz-truncated.jpg", "ok", "corrupt", 200),
    ("/img/formats/zz-bomb.png", "ok", "too_many_pixels", 200),
    ("/img/formats/cmyk.jpg", "ok", "ok", 200),
    ("/img/formats/palette.png", "ok", "ok", 200),
    ("/img/formats/rgba.png", "ok", "ok", 200),
    ("/img/formats/gray16.png", "ok", "ok", 200),
    ("/img/formats/animated.gif", "ok", "ok", 200),
    ("/img/formats/picture.webp", "ok", "ok", 200),
]
NOT_HTTP = [
    "file:///etc/passwd",
    "ftp://127.0.0.1/a.jpg",
    "data:image/png;base64,iVBORw0KGgo=",
    "http://",
    "not a url",
    "http://127.0.0.1:99999/a.png",
]


def test_every_fault_ends_as_a_row_with_a_precise_outcome(host: ImageHost, data_dir: Path) -> None:
    rows = [UrlRow(host.base_url + path, "x") for path, *_ in CASES]
    rows += [UrlRow(url, "x") for url in NOT_HTTP]

    downloaded = download_urls(rows, data_dir, OPTIONS)
    # In flight together (counted by the host): a slow URL holds up only itself.
    assert host.peak_in_flight >= 4

    verified = verify_rows(downloaded, data_dir)
    assert len(verified) == len(rows)
    report = {r.url: (r.outcome, r.http_status, r.attempts, r.reason) for r in verified}
    for (path, want_download, want_final, status), row, final in zip(
        CASES, downloaded, verified, strict=False
    ):
        assert row.outcome == want_download, (path, report[row.url])
        assert final.outcome == want_final, (path, report[row.url])
        assert row.reason, path
        if status is not None:
            assert row.http_status == status, (path, report[row.url])
    for row in verified[len(CASES) :]:
        assert row.outcome == "invalid_url" and row.attempts == 0, row
    assert all(r.outcome in DOWNLOAD_OUTCOMES + VERIFY_OUTCOMES for r in verified)

    by_path = {path: row for (path, *_), row in zip(CASES, downloaded, strict=False)}
    # Permanent answers are not retried; transient ones are, up to the limit.
    assert by_path["/status/404"].attempts == 1
    assert by_path["/status/503"].attempts == OPTIONS.retries + 1
    assert by_path["/flaky/0/0002.png?status=500&times=2"].attempts == 3
    assert by_path["/reset/0/0003.png"].attempts >= 2
    assert "redirects" in by_path["/loop/a"].reason
    assert "More than 10 redirects" in by_path["/redirect/10?to=/img/0/0007.png"].reason
    assert "file" in by_path["/goto?location=file:///etc/passwd"].reason
    assert "application/json" in by_path["/body/json"].reason
    assert "image/svg+xml" in by_path["/body/svg"].reason
    assert "Content-Length" in by_path["/big.png?bytes=5000&declared=900000000"].reason
    assert "reading stopped" in by_path["/big.png?bytes=3000000"].reason
    assert "deadline" in by_path["/drip/0/0004.png?interval=0.3"].reason
    # The Unicode URL and its percent-encoded spelling fetch the same bytes.
    unicode_rows = [r for r in downloaded if "b%C3%A4r" in r.url or "bär" in r.url]
    assert len({r.sha256 for r in unicode_rows}) == 1 and unicode_rows[0].sha256
    # A redirect chain ends at its image.
    assert by_path["/redirect/3?to=/img/0/0005.png"].sha256 == next(
        r.sha256 for r in download_urls([UrlRow(host.base_url + "/img/0/0005.png", "y")], data_dir)
    )

    # Bad files are kept aside with their reason, never deleted; nothing half-written anywhere.
    assert (data_dir / by_path["/img/formats/zz-bomb.png"].raw_path).exists() is False
    bomb = next(r for r in verified if r.url.endswith("zz-bomb.png"))
    assert bomb.raw_path.startswith("quarantine/too_many_pixels/")
    assert (data_dir / bomb.raw_path).exists()
    partial = [p for p in data_dir.rglob("*") if ".part-" in p.name or p.suffix == ".tmp"]
    assert partial == []
    # Nothing was fetched for URLs that are not http(s), even through a redirect.
    assert host.requests_for(host.base_url + "/goto?location=file:///etc/passwd") == 1
    assert host.user_agents() == {OPTIONS.user_agent}


def test_429_retry_after_is_waited_for(host: ImageHost, data_dir: Path) -> None:
    url = f"{host.base_url}/flaky/0/0007.png?status=429&times=1&retry_after=1"
    started = time.perf_counter()
    [row] = download_urls([UrlRow(url, "0")], data_dir, DownloadOptions(timeout_s=5.0))
    assert (row.outcome, row.attempts) == ("ok", 2)
    assert time.perf_counter() - started >= 1.0
    assert host.requests_for(url) == 2


def test_retry_after_as_an_http_date(host: ImageHost, data_dir: Path) -> None:
    from email.utils import formatdate
    from urllib.parse import quote

    when = quote(formatdate(time.time() + 60, usegmt=True))
    url = f"{host.base_url}/flaky/0/0008.png?status=503&times=1&retry_after={when}"
    started = time.perf_counter()
    [row] = download_urls([UrlRow(url, "0")], data_dir, OPTIONS)
    # A minute away does not fit the 2 s deadline: the row ends at once, saying so.
    assert (row.outcome, row.http_status, row.attempts) == ("http_error", 503, 1)
    assert "does not fit" in row.reason
    assert time.perf_counter() - started < 1.5
