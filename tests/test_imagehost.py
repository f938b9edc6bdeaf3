"""The embedded digits and the local image host, exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import io
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from standins.imagehost import ImageHost
from tasks.manifest import DOWNLOAD_OUTCOMES
from ursa.embedded import write_embedded_images


def fetch(url: str, timeout: float = 5.0) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of a GET; HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_embedded_digits_are_1797_pngs_over_10_classes(digits: Path) -> None:
    files = sorted(digits.glob("*/*.png"))
    assert len(files) == 1797
    assert sorted({f.parent.name for f in files}) == [str(d) for d in range(10)]
    with Image.open(files[0]) as im:
        assert (im.mode, im.size, im.format) == ("L", (32, 32), "PNG")
        assert im.getextrema()[1] > 200  # 0..16 was scaled up to 0..255


def test_embedded_digits_are_idempotent(digits: Path, tmp_path: Path) -> None:
    before = {f: f.stat().st_mtime_ns for f in digits.glob("*/*.png")}
    write_embedded_images(digits)
    assert {f: f.stat().st_mtime_ns for f in digits.glob("*/*.png")} == before

    # Another size is another dataset: the folder is rewritten, not mixed.
    small = write_embedded_images(tmp_path / "d", size=16)
    again = write_embedded_images(small, size=24)
    with Image.open(again / "3" / "0003.png") as im:
        assert im.size == (24, 24)
    assert len(list(again.glob("*/*.png"))) == 1797
    assert (digits / "0" / "0000.png").read_bytes() == (
        write_embedded_images(tmp_path / "e") / "0" / "0000.png"
    ).read_bytes()


def test_host_serves_every_file_and_refuses_others(host: ImageHost, digits: Path) -> None:
    status, content_type, body = fetch(f"{host.base_url}/img/7/0007.png")
    assert (status, content_type) == (200, "image/png")
    assert body == (digits / "7" / "0007.png").read_bytes()
    assert fetch(f"{host.base_url}/img/7/nope.png")[0] == 404
    assert fetch(f"{host.base_url}/img/..%2F..%2Fetc%2Fpasswd")[0] == 404
    assert fetch(f"{host.base_url}/flaky/..%2F..%2Fetc/passwd")[0] == 404


def test_url_lists_hold_real_images_and_junk(host: ImageHost, tmp_path: Path) -> None:
    lists = host.write_url_lists(tmp_path / "lists", max_per_class=4)
    assert sorted(p.name for p in lists.iterdir()) == [f"{d}.txt" for d in range(10)]
    by_label = {p.stem: p.read_text().splitlines() for p in lists.iterdir()}
    every = [url for urls in by_label.values() for url in urls]
    assert all(url.startswith(host.base_url + "/") for url in every)

    expected = host.expected_outcomes()
    assert set(expected.values()) <= set(DOWNLOAD_OUTCOMES)
    assert {"http_error", "timeout", "not_image", "empty", "duplicate_url", "ok"} <= set(
        expected.values()
    )
    for junk in host.junk():
        assert junk.url in by_label[junk.label], junk
    # Spread over classes, not piled into one.
    assert len({j.label for j in host.junk()}) == 10

    kinds = {j.kind: j for j in host.junk()}
    dup = kinds["duplicate_url"]
    assert by_label[dup.label].count(dup.url) == 2
    copy = kinds["exact_copy"]
    assert fetch(copy.url)[2] == fetch(copy.source)[2]
    conflict = kinds["label_conflict"]
    assert fetch(conflict.url)[2] == fetch(conflict.source)[2]
    assert conflict.source.split("/")[-2] != conflict.label
    # Flaky and slow stand in for the real image they serve.
    for kind in ("flaky", "slow"):
        assert kinds[kind].source not in every
    with Image.open(io.BytesIO(fetch(kinds["near_resized"].url)[2])) as im:
        assert (im.format, im.size) == ("PNG", (48, 48))
    with Image.open(io.BytesIO(fetch(kinds["near_jpeg"].url)[2])) as im:
        assert (im.format, im.size) == ("JPEG", (32, 32))

    # Deterministic: the same host writes the same lists.
    again = host.write_url_lists(tmp_path / "again", max_per_class=4)
    assert all((again / p.name).read_text() == p.read_text() for p in lists.iterdir())
    clean = host.write_url_lists(tmp_path / "clean", max_per_class=2, junk=False)
    assert sum(len(p.read_text().splitlines()) for p in clean.iterdir()) == 20


def test_junk_answers_as_announced(host: ImageHost) -> None:
    kinds = {j.kind: j for j in host.junk()}
    assert fetch(kinds["missing"].url)[0] == 404
    assert fetch(kinds["flaky"].url)[0] == 500
    status, content_type, body = fetch(kinds["flaky"].url)
    assert (status, content_type) == (200, "image/png") and body == fetch(kinds["flaky"].source)[2]
    status, content_type, _ = fetch(kinds["html"].url)
    assert (status, content_type) == (200, "text/html")
    assert fetch(kinds["empty"].url)[:3] == (200, "image/jpeg", b"")
    truncated = fetch(kinds["truncated_jpeg"].url)[2]
    assert truncated.startswith(b"\xff\xd8\xff") and not truncated.endswith(b"\xff\xd9")


def test_flaky_status_and_retry_after_are_configurable(host: ImageHost) -> None:
    url = f"{host.base_url}/flaky/3/0003.png?status=429&times=2&retry_after=7"
    request = urllib.request.Request(url)
    for _ in range(2):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        with info.value as error:
            assert error.code == 429 and error.headers["Retry-After"] == "7"
    assert fetch(url)[0] == 200


def test_latency_delays_every_response(digits: Path) -> None:
    with ImageHost(digits, latency_s=0.3) as slow_host:
        started = time.perf_counter()
        assert fetch(f"{slow_host.base_url}/img/0/0000.png")[0] == 200
        assert fetch(f"{slow_host.base_url}/img/0/missing.png")[0] == 404
        assert time.perf_counter() - started >= 0.6


def test_stop_cuts_slow_responses_short(digits: Path) -> None:
    image_host = ImageHost(digits).start()
    slow = next(j for j in image_host.junk() if j.kind == "slow")  # answers after 30 s
    answers: list[object] = []

    def client() -> None:
        try:  # a timeout longer than the slow answer: only a cut ends this early
            answers.append(fetch(slow.url, timeout=60))
        except OSError as exc:  # what a connection closed instead of answered would give
            answers.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 30
    while image_host.requests_for(slow.url) == 0:  # connected, and waiting for its answer
        assert thread.is_alive() and time.monotonic() < deadline, answers
        time.sleep(0.02)
    image_host.stop()
    thread.join(timeout=60)
    # Cut by stop(): the waiting handler was woken and said so at once. Not the image after
    # its 30 s (200), not a connection dropped by aiohttp's shutdown timeout after a handler
    # slept through the stop (an OSError), not the client's own timeout, not refused.
    assert answers == [(503, "text/plain; charset=utf-8", b"Host is shutting down")]
    image_host.stop()  # a second stop is harmless
    with pytest.raises(RuntimeError, match="not running"):
        _ = image_host.base_url


def test_slow_answers_after_its_delay(host: ImageHost) -> None:
    assert fetch(f"{host.base_url}/slow/0/0000.png?seconds=0.1")[0] == 200


def test_too_small_max_per_class_is_named(host: ImageHost, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_per_class"):
        host.write_url_lists(tmp_path, max_per_class=1)
