"""Generated photo-like images: the local stand-in for what an image search finds on the web.

Three classes of bear pictures (a grizzly by a river, a black bear in a dark forest, a teddy
bear indoors), drawn from a seed: each class has its own palette and shape, every picture its
own size (400-2000 px on the long side), aspect ratio, pose, clutter and sensor noise. Like
web photos, most are JPEGs, some of them stored sideways with an EXIF orientation that says
how to turn them upright, and some come as PNG, WebP, greyscale or CMYK JPEG.

``write_photos`` writes ``<dest>/<class>/<name>``; :class:`standins.imagehost.ImageHost` serves
that folder (with its junk) and :mod:`standins.searchhost` makes it searchable.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PHOTO_CLASSES = ("grizzly", "black", "teddy")
# Query words per class, as a user would type them: `ursa urls grizzly="grizzly bear" ...`.
QUERIES = {"grizzly": "grizzly bear", "black": "black bear", "teddy": "teddy bear"}
_ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3, 9 / 16)
_DRAW_SIDE = 320  # shapes are drawn at this size, then scaled up (a camera's soft optics)


@dataclass(frozen=True)
class _Look:
    sky: tuple[int, int, int]
    ground: tuple[int, int, int]
    fur: tuple[int, int, int]
    muzzle: tuple[int, int, int]
    hump: bool  # a grizzly's shoulder hump
    round_ears: bool  # a teddy's big round ears and button eyes


_LOOKS = {
    "grizzly": _Look((150, 185, 215), (70, 110, 60), (125, 85, 45), (160, 120, 80), True, False),
    "black": _Look((60, 80, 70), (30, 55, 35), (22, 20, 24), (120, 95, 70), False, False),
    "teddy": _Look((225, 205, 180), (150, 110, 90), (205, 150, 85), (235, 205, 160), False, True),
}


def write_photos(
    dest: Path, per_class: int, seed: int = 0, classes: tuple[str, ...] = PHOTO_CLASSES
) -> Path:
    """Write ``per_class`` photos per class under ``dest/<class>/``; return ``dest``.

    Deterministic in ``seed``: a folder already written with the same arguments is reused
    as it is (the benchmark's photos take a minute to make).
    """
    dest = Path(dest)
    marker = dest / ".photos.json"
    wanted = {"per_class": per_class, "seed": seed, "classes": list(classes)}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return dest
    jobs = [(dest, label, i, seed) for label in classes for i in range(per_class)]
    for label in classes:
        (dest / label).mkdir(parents=True, exist_ok=True)
    if len(jobs) < 64:
        for job in jobs:
            _write_one(job)
    else:
        with ProcessPoolExecutor() as pool:
            list(pool.map(_write_one, jobs, chunksize=16))
    marker.write_text(json.dumps(wanted))
    return dest


def photo(label: str, index: int, seed: int = 0) -> Image.Image:
    """One upright RGB photo of class ``label``, the same for the same arguments."""
    rng = random.Random(f"{seed}/{label}/{index}")
    look = _LOOKS[label]
    aspect = rng.choice(_ASPECTS)
    long_side = int(400 * 5 ** rng.random())  # 400-2000 px, more small ones than large
    size = (
        (long_side, int(long_side / aspect))
        if aspect >= 1
        else (int(long_side * aspect), long_side)
    )
    small = (
        max(8, round(_DRAW_SIDE * size[0] / long_side)),
        max(8, round(_DRAW_SIDE * size[1] / long_side)),
    )
    im = _scene(small, look, rng)
    im = im.filter(ImageFilter.GaussianBlur(0.6)).resize(size, Image.Resampling.BICUBIC)
    # Sensor grain: one grey value per pixel (numpy's generator; Pillow's effect_noise was
    # the slowest step at 200 ms a photo).
    spread = rng.randint(6, 16)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(
        -spread, spread + 1, size=(size[1], size[0], 1), dtype=np.int16
    )
    pixels = np.asarray(im, dtype=np.int16) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _scene(size: tuple[int, int], look: _Look, rng: random.Random) -> Image.Image:
    w, h = size
    im = Image.new("RGB", size, _jitter(look.sky, rng, 20))
    draw = ImageDraw.Draw(im)
    horizon = int(h * rng.uniform(0.35, 0.65))
    for y in range(horizon, h):  # ground, darker towards the camera
        t = (y - horizon) / max(1, h - horizon)
        draw.line([(0, y), (w, y)], fill=tuple(int(c * (1 - 0.4 * t)) for c in look.ground))
    for _ in range(rng.randint(3, 12)):  # clutter: trees, rocks, furniture
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.03, 0.15) * w
        colour = _jitter(rng.choice((look.ground, look.sky)), rng, 40)
        draw.ellipse([x - r, y - r * rng.uniform(0.5, 2), x + r, y + r], fill=colour)
    # The bear: body, head, ears, muzzle; where and how big varies like a photographer's framing.
    scale = min(w, h) * rng.uniform(0.25, 0.45)
    cx, cy = w * rng.uniform(0.3, 0.7), horizon + scale * rng.uniform(-0.2, 0.3)
    fur = _jitter(look.fur, rng, 18)
    facing = rng.choice((-1, 1))
    draw.ellipse([cx - scale, cy - scale * 0.6, cx + scale, cy + scale * 0.6], fill=fur)
    if look.hump:
        hx = cx - facing * scale * 0.3
        draw.ellipse(
            [hx - scale * 0.4, cy - scale * 0.85, hx + scale * 0.4, cy - scale * 0.1], fill=fur
        )
    hx, hy, hr = cx + facing * scale * 0.9, cy - scale * 0.5, scale * 0.42
    draw.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=fur)
    ear = hr * (0.5 if look.round_ears else 0.3)
    for side in (-1, 1):
        ex, ey = hx + side * hr * 0.7, hy - hr * 0.8
        draw.ellipse([ex - ear, ey - ear, ex + ear, ey + ear], fill=fur)
    mx = hx + facing * hr * 0.35
    draw.ellipse([mx - hr * 0.4, hy, mx + hr * 0.4, hy + hr * 0.55], fill=look.muzzle)
    eye = hr * (0.14 if look.round_ears else 0.07)
    for side in (-1, 1):
        ex = hx + side * hr * 0.35
        draw.ellipse([ex - eye, hy - hr * 0.3 - eye, ex + eye, hy - hr * 0.3 + eye], fill=(5, 5, 5))
    return im


def _jitter(colour: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, ...]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


# EXIF orientation -> the transpose that stores an upright picture so that a viewer applying
# the tag (ImageOps.exif_transpose) shows it upright again.
_STORED = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def _write_one(job: tuple[Path, str, int, int]) -> None:
    dest, label, index, seed = job
    im = photo(label, index, seed)
    rng = random.Random(f"{seed}/{label}/{index}/file")
    roll = rng.random()
    stem = dest / label / f"{label}-{index:04d}"
    if roll < 0.06:  # PNG: lossless, so large; kept to modest sizes as on the web
        im.thumbnail((800, 800))
        im.save(stem.with_suffix(".png"), optimize=False, compress_level=1)
    elif roll < 0.12:
        im.save(stem.with_suffix(".webp"), quality=80, method=0)
    elif roll < 0.16:
        im.convert("L").save(stem.with_suffix(".jpg"), quality=85)
    elif roll < 0.20:
        im.convert("CMYK").save(stem.with_suffix(".jpg"), quality=85)
    elif roll < 0.35:  # a phone's photo: stored sideways, with the tag that turns it upright
        orientation = rng.choice(tuple(_STORED))
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.transpose(_STORED[orientation]).save(stem.with_suffix(".jpg"), quality=85, exif=exif)
    else:
        im.save(stem.with_suffix(".jpg"), quality=rng.choice((75, 85, 92)))
