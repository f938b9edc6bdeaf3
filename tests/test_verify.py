"""tasks.verify: every download is decoded; good ones are stored as RGB images (as they came
when they already decode to plain RGB, else as PNG), bad ones go to quarantine."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.checks import phash, pixel_hash
from tasks.manifest import UrlRow
from tasks.verify import verify_rows
from tests.images import encode, png_header_only


def downloaded(data_dir: Path, data: bytes, url: str, label: str = "cat") -> UrlRow:
    """A row as the downloader leaves it: bytes stored under raw/<sha256>.bin."""
    sha = hashlib.sha256(data).hexdigest()
    raw = data_dir / "raw" / f"{sha}.bin"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(data)
    return UrlRow(url=url, label=label, outcome="ok", sha256=sha, raw_path=f"raw/{sha}.bin")


def photo(size: tuple[int, int] = (40, 30), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize(("fmt", "ext"), [("JPEG", "jpg"), ("PNG", "png")])
def test_plain_rgb_image_is_kept_as_downloaded(data_dir: Path, fmt: str, ext: str) -> None:
    data = encode(photo(), fmt)
    row = downloaded(data_dir, data, f"http://h/a.{ext}")
    (out,) = verify_rows([row], data_dir)
    assert out.outcome == "ok"
    assert out.image_path == f"images/{row.sha256}.{ext}"  # content addressed
    assert (data_dir / out.image_path).read_bytes() == data  # not re-encoded
    assert (out.width, out.height) == (40, 30)
    with Image.open(data_dir / out.image_path) as im:
        assert (im.format, im.mode, im.size) == (fmt, "RGB", (40, 30))
        # The hashes describe the stored file's pixels, as dedup and training read them.
        assert pixel_hash(im) == out.pixel_hash
        assert f"{phash(im):016x}" == out.phash
    assert (data_dir / row.raw_path).exists()  # the raw download stays


@pytest.mark.parametrize(
    ("data", "outcome"),
    [
        (encode(photo((64, 64)), "JPEG")[:400], "corrupt"),  # truncated
        (b"", "empty"),
        (b"<!DOCTYPE html><html><title>404</title></html>", "not_image"),
        (png_header_only(30000, 30000), "too_many_pixels"),  # a decompression bomb
        (encode(photo((4, 40)), "PNG"), "too_small"),
    ],
    ids=["truncated", "empty", "html", "bomb", "tiny"],
)
def test_bad_files_are_quarantined_not_deleted(data_dir: Path, data: bytes, outcome: str) -> None:
    row = downloaded(data_dir, data, "http://h/bad")
    (out,) = verify_rows([row], data_dir)
    assert out.outcome == outcome
    assert out.reason
    assert out.raw_path == f"quarantine/{outcome}/{row.sha256}.bin"
    assert (data_dir / out.raw_path).read_bytes() == data
    assert not (data_dir / row.raw_path).exists()
    assert out.image_path == ""
    assert not list((data_dir / "images").glob(f"{row.sha256}.*"))


def test_exif_orientation_is_applied(data_dir: Path) -> None:
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    row = downloaded(data_dir, encode(im, "JPEG", exif=exif.tobytes(), quality=95), "http://h/e")
    (out,) = verify_rows([row], data_dir)
    assert (out.width, out.height) == (20, 40)
    assert out.image_path.endswith(".png")  # rotated: the file as it came would be wrong
    pixels = np.asarray(Image.open(data_dir / out.image_path))
    assert pixels[5, 10, 0] > 200 and pixels[35, 10, 2] > 200  # red on top, blue below


def _frames() -> list[Image.Image]:
    return [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0)]]


MODES = {
    "cmyk": encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
    "palette": encode(Image.new("RGB", (16, 16), (9, 99, 199)).quantize(8), "PNG"),
    "rgba": encode(Image.new("RGBA", (16, 16), (255, 0, 0, 128)), "PNG"),
    "la": encode(Image.new("LA", (16, 16), (50, 255)), "PNG"),
    "gray_jpeg": encode(Image.new("L", (16, 16), 99), "JPEG"),
    "gray16": encode(Image.fromarray(np.full((16, 16), 40000, np.uint16)), "PNG"),
    "gif": encode(_frames()[0], "GIF", save_all=True, append_images=_frames()[1:]),
    "webp": encode(Image.new("RGB", (16, 16), (0, 0, 255)), "WEBP"),
}


@pytest.mark.parametrize("kind", list(MODES))
def test_every_other_mode_is_stored_as_rgb_png(data_dir: Path, kind: str) -> None:
    row = downloaded(data_dir, MODES[kind], f"http://h/{kind}")
    (out,) = verify_rows([row], data_dir)
    assert out.outcome == "ok", out.reason
    assert out.image_path == f"images/{row.sha256}.png"
    with Image.open(data_dir / out.image_path) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (16, 16))
        assert pixel_hash(im) == out.pixel_hash


def test_same_bytes_from_two_urls_are_decoded_once(data_dir: Path) -> None:
    good = encode(photo(), "PNG")
    bad = encode(photo(seed=1), "JPEG")[:300]
    rows = [
        downloaded(data_dir, good, "http://a/x.png"),
        downloaded(data_dir, bad, "http://a/broken.jpg"),
        downloaded(data_dir, good, "http://b/x.png", label="dog"),
        downloaded(data_dir, bad, "http://b/broken.jpg", label="dog"),
    ]
    out = verify_rows(rows, data_dir)
    assert [r.outcome for r in out] == ["ok", "corrupt", "ok", "corrupt"]
    assert out[0].image_path == out[2].image_path
    assert out[1].raw_path == out[3].raw_path and (data_dir / out[1].raw_path).exists()
    assert [r.label for r in out] == ["cat", "cat", "dog", "dog"]


def test_order_length_and_passthrough(data_dir: Path) -> None:
    failed = UrlRow(url="http://h/404", label="cat", outcome="http_error", http_status=404)
    rows = [
        downloaded(data_dir, encode(photo(seed=2), "PNG"), "http://h/1"),
        failed,
        downloaded(data_dir, b"", "http://h/empty"),
        downloaded(data_dir, encode(photo(seed=3), "WEBP"), "http://h/3"),
    ]
    out = verify_rows(rows, data_dir)
    assert len(out) == len(rows)
    assert [r.url for r in out] == [r.url for r in rows]
    assert out[1] == failed
    assert [r.outcome for r in out] == ["ok", "http_error", "empty", "ok"]
    leftovers = [p for p in data_dir.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_rerun_gives_the_same_rows(data_dir: Path) -> None:
    rows = [
        downloaded(data_dir, encode(photo(seed=4), "PNG"), "http://h/ok"),
        downloaded(data_dir, b"not an image at all", "http://h/text"),
    ]
    first = verify_rows(rows, data_dir)
    # The same input again (the bad file is already in quarantine): same verdicts.
    assert verify_rows(rows, data_dir) == first
    assert first[1].outcome == "not_image"


def test_worker_processes_agree_with_the_plain_loop(data_dir: Path) -> None:
    datas = [encode(photo(seed=s), "PNG") for s in range(6)] + [b"", b"<html>"]
    rows = [downloaded(data_dir, d, f"http://h/{i}") for i, d in enumerate(datas)]
    parallel = verify_rows(rows, data_dir, workers=2)
    assert [r.outcome for r in parallel] == ["ok"] * 6 + ["empty", "not_image"]
    for r in parallel[:6]:
        assert (data_dir / r.image_path).exists()
    # Rerun with the plain loop: content-addressed outputs are reused, rows are identical.
    assert verify_rows(rows, data_dir, workers=1) == parallel


def test_worker_module_does_not_import_prefect() -> None:
    # Spawned workers import tasks.checks: with Prefect they would each spend seconds starting.
    code = "import sys, tasks.checks; print(sorted(m for m in sys.modules if 'prefect' in m))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "[]"


def test_ok_row_without_a_valid_sha256_is_refused(data_dir: Path) -> None:
    row = UrlRow(url="http://h/x", label="cat", outcome="ok", sha256="../../etc", raw_path="raw/x")
    with pytest.raises(ValueError, match=r"http://h/x.*\.\./\.\./etc"):
        verify_rows([row], data_dir)
