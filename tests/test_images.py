"""ursa.images: untrusted bytes in, a safe RGB picture (or a reasoned refusal) out."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from tests.images import encode, png_header_only
from ursa.images import ImageError, open_image, sniff_extension


def reason_of(data: bytes, **limits) -> str:
    with pytest.raises(ImageError) as info:
        open_image(data, **limits)
    assert str(info.value)  # every refusal says why
    return info.value.reason


def test_sniff_extension() -> None:
    assert sniff_extension(encode(Image.new("RGB", (2, 2)), "PNG")[:16]) == "png"
    assert sniff_extension(encode(Image.new("RGB", (2, 2)), "JPEG")[:16]) == "jpg"
    assert sniff_extension(encode(Image.new("RGB", (2, 2)), "WEBP")[:16]) == "webp"
    assert sniff_extension(b"<!doctype html>") is None


def test_refusals_name_their_reason() -> None:
    jpeg = encode(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG")
    assert reason_of(b"") == "empty"
    assert reason_of(b"<!DOCTYPE html><html><body>Not found</body></html>") == "not_image"
    assert reason_of(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40) == "corrupt"
    assert reason_of(jpeg[: len(jpeg) // 2]) == "corrupt"
    assert reason_of(encode(Image.new("RGB", (4, 30)), "PNG"), min_side=8) == "too_small"


@pytest.mark.parametrize("side", [7000, 30000])  # over our limit; and over Pillow's own guard
def test_decompression_bomb_is_refused_on_the_header(side: int) -> None:
    # The file holds no pixel data: had it been decoded, it would be "corrupt".
    start = time.perf_counter()
    assert reason_of(png_header_only(side, side)) == "too_many_pixels"
    assert time.perf_counter() - start < 1.0


def test_exif_orientation_is_applied() -> None:
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = open_image(encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    top, bottom = np.asarray(out)[5, 10], np.asarray(out)[35, 10]
    assert top[0] > 200 and top[2] < 60  # the red half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def _palette_with_transparency() -> Image.Image:
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (8, 0, 16, 16))
    im.info["transparency"] = 0
    return im


def test_modes_become_rgb() -> None:
    cases = {
        "cmyk": encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
        "rgba": encode(Image.new("RGBA", (16, 16), (255, 0, 0, 0)), "PNG"),
        "la": encode(Image.new("LA", (16, 16), (0, 0)), "PNG"),
        "palette": encode(_palette_with_transparency(), "PNG"),
        "gray16": encode(Image.fromarray(np.full((16, 16), 32768, np.uint16)), "PNG"),
        "webp": encode(Image.new("RGB", (16, 16), (0, 0, 255)), "WEBP", lossless=True),
        "bilevel": encode(Image.new("1", (16, 16), 1), "PNG"),
    }
    got = {name: open_image(data) for name, data in cases.items()}
    assert all(im.mode == "RGB" and im.size == (16, 16) for im in got.values())
    px = {name: tuple(int(v) for v in np.asarray(im)[0, 0]) for name, im in got.items()}
    assert px["cmyk"][0] > 200 and px["cmyk"][1] < 60  # magenta + yellow = red
    assert px["rgba"] == (255, 255, 255)  # fully transparent: composited on white
    assert px["la"] == (255, 255, 255)
    assert px["palette"] == (255, 255, 255)
    assert tuple(np.asarray(got["palette"])[0, 12]) == (255, 0, 0)
    assert px["gray16"] == (128, 128, 128)  # 16-bit scaled down, not clipped
    assert px["webp"] == (0, 0, 255)
    assert px["bilevel"] == (255, 255, 255)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    out = open_image(data)
    assert out.mode == "RGB"
    assert tuple(np.asarray(out)[0, 0]) == (255, 0, 0)
