"""Deduplication and the train/valid split: verified images in, one dataset manifest out.

Exact duplicates (same bytes, or same pixels in another encoding) are found by hash.
Near duplicates (resized, re-encoded) are proposed by a 64-bit perceptual hash and confirmed
at pixel level: on small, similar pictures such as the 8x8 digits, thousands of *distinct*
images lie within a few bits of each other, so a hash alone would delete real data.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from PIL import Image
from prefect import task
from prefect.cache_policies import NONE

from tasks.manifest import OK, Dataset, ImageRow, UrlRow, write_dataset

log = logging.getLogger(__name__)

STATUSES = ("kept", "duplicate", "near_duplicate", "label_conflict")

# same_picture compares grayscale thumbnails of this side, with Pillow's antialiased bilinear.
THUMB_SIDE = 16

# Mean absolute difference (0..1) under which two thumbnails are the same picture.
# Calibrated on sklearn's 1,797 digits rendered as 32 px grayscale PNGs (0..16 -> 0..255,
# bicubic); tests/test_dedup.py measures it again:
#   copies vs their original, max:  resized to 48 px 0.0042, JPEG q60 0.0047, JPEG q30 0.0081
#   distinct originals within 10 bits of pHash (3,651 pairs): min 0.0254, 1st percentile 0.0388
# 0.015 sits between the two with about 2x margin on either side. (The same copies lie within
# 2 (resize), 4 (q60) and 6 (q30) bits of their original's pHash: the default radius 10 finds them.)
SAME_PICTURE_TOLERANCE = 0.015


def phash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash, as imagehash's ``phash`` (hash_size=8, highfreq_factor=4).

    Grayscale, 32x32 Lanczos, 2-D DCT-II, the 8x8 lowest frequencies, bit = coefficient >
    their median; bits read row by row, the first one most significant.
    """
    pixels = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), float)
    low = scipy.fft.dct(scipy.fft.dct(pixels, axis=0), axis=1)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def pixel_hash(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and the size: equal for one picture in two encodings."""
    rgb = image.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}\n".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1, dtype=np.uint8)


def hamming_pairs(hashes: np.ndarray, radius: int, chunk: int = 4096) -> np.ndarray:
    """All index pairs ``(i, j)``, ``i < j``, whose 64-bit hashes differ in <= ``radius`` bits.

    Returns an ``(n_pairs, 2)`` int64 array sorted by ``i`` then ``j``. The hashes are compared
    block by block (``chunk`` x ``chunk``, upper triangle only), so memory stays at about
    ``9 * chunk**2`` bytes whatever the number of hashes.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64).ravel()
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}.")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}.")
    n = len(hashes)
    found: list[np.ndarray] = []
    for a in range(0, n, chunk):
        rows = hashes[a : a + chunk, None]
        for b in range(a, n, chunk):
            near = _popcount(rows ^ hashes[None, b : b + chunk]) <= radius
            if a == b:
                near = np.triu(near, k=1)  # i < j, and never a hash with itself
            i, j = np.nonzero(near)
            found.append(np.stack([i + a, j + b], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _thumbnail(image: Image.Image) -> np.ndarray:
    """Grayscale, THUMB_SIDE square, 0..1: what same_picture compares."""
    small = image.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32) / 255.0


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def same_picture(a: Image.Image, b: Image.Image, tolerance: float = SAME_PICTURE_TOLERANCE) -> bool:
    """Whether ``a`` and ``b`` show the same picture up to resizing and re-encoding.

    Mean absolute difference of small grayscale thumbnails, in 0..1; see
    SAME_PICTURE_TOLERANCE for how the default was measured.
    """
    return _difference(_thumbnail(a), _thumbnail(b)) <= tolerance


@dataclass
class _Image:
    """One distinct (file, label) with what dedup needs to know about it."""

    row: ImageRow
    thumb: np.ndarray
    phash: int


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]  # path halving
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def build_dataset(
    rows: list[UrlRow],
    data_dir: Path,
    valid_pct: float = 0.2,
    seed: int = 0,
    radius: int = 10,
) -> Dataset:
    """Group duplicates, keep one image per group, split the kept ones; write the manifest."""
    if not 0.0 <= valid_pct < 1.0:
        raise ValueError(f"valid_pct must be in [0, 1), got {valid_pct}.")
    data_dir = Path(data_dir)
    images = _load_images(rows, data_dir)

    groups = _UnionFind(len(images))
    by_pixels: dict[str, int] = {}
    for i, im in enumerate(images):
        first = by_pixels.setdefault(im.row.pixel_hash, i)
        groups.union(first, i)
    for i, j in _confirmed_pairs(images, radius):
        groups.union(i, j)

    members: dict[int, list[ImageRow]] = defaultdict(list)
    for i, im in enumerate(images):
        members[groups.find(i)].append(im.row)
    for group in members.values():
        _mark(group)
    _split(
        [r for r in (im.row for im in images) if r.status == "kept"],
        valid_pct=valid_pct,
        seed=seed,
    )

    image_rows = sorted((im.row for im in images), key=lambda r: (r.sha256, r.label))
    conflicts = label_conflicts(image_rows)
    if conflicts:
        log.warning("%d duplicate groups carry more than one label: %s", len(conflicts), conflicts)
    return write_dataset(data_dir, image_rows)


def _confirmed_pairs(
    images: list[_Image], radius: int, chunk: int = 65536
) -> list[tuple[int, int]]:
    """Perceptual-hash candidates that same_picture confirms: the hash only proposes."""
    if not images:
        return []
    candidates = hamming_pairs(np.array([im.phash for im in images], dtype=np.uint64), radius)
    thumbs = np.stack([im.thumb.ravel() for im in images])
    confirmed: list[tuple[int, int]] = []
    for start in range(0, len(candidates), chunk):  # bounded memory for many candidates
        pairs = candidates[start : start + chunk]
        diff = np.abs(thumbs[pairs[:, 0]] - thumbs[pairs[:, 1]]).mean(axis=1)
        confirmed += [(int(i), int(j)) for i, j in pairs[diff <= SAME_PICTURE_TOLERANCE]]
    return confirmed


def _load_images(rows: list[UrlRow], data_dir: Path) -> list[_Image]:
    """One entry per distinct (file, label); the same file under two labels is a conflict."""
    chosen: dict[tuple[str, str], UrlRow] = {}
    for row in rows:
        if row.outcome != OK or not row.image_path:
            continue
        key = (row.sha256, row.label)
        # Of several URLs with the same bytes, record the smallest: independent of row order.
        if key not in chosen or row.url < chosen[key].url:
            chosen[key] = row
    decoded: dict[str, tuple[str, int, np.ndarray, int, int]] = {}
    images: list[_Image] = []
    for (sha, label), row in sorted(chosen.items()):
        if sha not in decoded:
            with Image.open(data_dir / row.image_path) as im:
                im = im.convert("RGB")
                decoded[sha] = (pixel_hash(im), phash(im), _thumbnail(im), im.width, im.height)
        pix, ph, thumb, width, height = decoded[sha]
        image_row = ImageRow(
            sha256=sha,
            image_path=row.image_path,
            label=label,
            url=row.url,
            width=width,
            height=height,
            pixel_hash=pix,
            phash=f"{ph:016x}",
            group="",
        )
        images.append(_Image(row=image_row, thumb=thumb, phash=ph))
    return images


def _mark(group: list[ImageRow]) -> None:
    """Set status, group and duplicate_of for the members of one duplicate group."""
    best = min(group, key=lambda r: (-r.width * r.height, r.sha256))
    conflict = len({r.label for r in group}) > 1
    for r in group:
        r.group = best.sha256
        if conflict:
            # We cannot know which label is right, so none of them is kept.
            r.status = "label_conflict"
        elif r is best:
            r.status = "kept"
        else:
            r.status = "duplicate" if r.pixel_hash == best.pixel_hash else "near_duplicate"
            r.duplicate_of = best.sha256


def _split(kept: list[ImageRow], valid_pct: float, seed: int) -> None:
    """Stratified, deterministic: per label, groups in seeded-hash order, the first to valid."""
    by_label: dict[str, set[str]] = defaultdict(set)
    for r in kept:
        by_label[r.label].add(r.group)
    split_of: dict[str, str] = {}
    for label_groups in by_label.values():
        groups = sorted(
            label_groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest()
        )
        n_valid = round(valid_pct * len(groups))
        for k, g in enumerate(groups):
            split_of[g] = "valid" if k < n_valid else "train"
    for r in kept:
        r.split = split_of[r.group]


def status_counts(rows: Iterable[ImageRow]) -> dict[str, int]:
    """How many images are kept, duplicate, near_duplicate and label_conflict."""
    counts = Counter(r.status for r in rows)
    return {status: counts.get(status, 0) for status in STATUSES}


def label_conflicts(rows: Iterable[ImageRow]) -> dict[str, list[str]]:
    """Duplicate groups whose members carry different labels: group -> sorted labels."""
    labels: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r.status == "label_conflict":
            labels[r.group].add(r.label)
    return {group: sorted(found) for group, found in sorted(labels.items())}


dedup_task = task(name="dedup", cache_policy=NONE)(build_dataset)
