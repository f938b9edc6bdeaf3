"""Deduplication and the train/valid split: verified images in, one dataset manifest out.

Exact duplicates (same bytes, or same pixels in another encoding) are found by hash.
Near duplicates (resized, re-encoded, slightly cropped, brightened or contrasted) are proposed
by a 64-bit perceptual hash and confirmed at pixel level: on small, similar pictures such as
the 8x8 digits, thousands of *distinct* images lie within a few bits of each other, so a hash
alone would delete real data.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import sqlite3
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image
from prefect import task
from prefect.cache_policies import NONE

from tasks.checks import phash, pixel_hash
from tasks.ledger import REMOVED, Ledger, apply_ledger
from tasks.manifest import OK, Dataset, ImageRow, UrlRow, batches, iter_rows, write_dataset
from tasks.splits import group_rank, valid_group_count
from ursa.feedback import FEEDBACK, URL_SCHEME

log = logging.getLogger(__name__)

STATUSES = ("kept", "duplicate", "near_duplicate", "label_conflict")

# same_picture works on a grayscale "base" of BASE_SIDE square (Pillow's antialiased bilinear)
# and compares thumbnails of THUMB_SIDE square taken from it.
BASE_SIDE = 32
THUMB_SIDE = 16
# Crops tried: up to MAX_CROP of the side off each axis (both ends together), in CROP_STEP
# steps; a crop between two steps is at most CROP_STEP / 2 away from one of them.
MAX_CROP = 0.05
CROP_STEP = 0.0125

# Mean absolute difference (0..1) of thumbnails under which two images are the same picture.
# The difference is the smallest of: one image's thumbnail against the other's cropped by
# any of the crops above (either way round), and one image against the other with a
# brightness/contrast change (gain and offset, clipped to 0..1) fitted to it (either way).
# Calibrated on sklearn's 1,797 digits rendered as 32 px grayscale PNGs (0..16 -> 0..255,
# bicubic); tests/test_dedup.py measures it again:
#   copies vs their original, max: resized to 48 px 0.0035, JPEG q60 0.0040, JPEG q30 0.0074,
#   1 px (3%) off two sides 0.0138 (0.0130 on the half of them that the test crops; such a
#   crop lies half-way between two CROP_STEPs: the worst case), brightness x1.3 0.0003,
#   x0.7 0.0003, contrast x1.3 0.0002
#   distinct originals within 10 bits of pHash (3,651 pairs): min 0.0218 (0.0203 in
#   benchmarks/bench_dedup.py's set), 1st percentile 0.034
# 0.017 sits between the two, about 20% from either. (The copies lie within 10 bits of their
# original's pHash, but about 7% of the crops: those are not proposed, and stay apart.)
SAME_PICTURE_TOLERANCE = 0.017


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1, dtype=np.uint8)


def hamming_pairs(
    hashes: np.ndarray, radius: int, chunk: int = 4096, workers: int = 2
) -> np.ndarray:
    """All index pairs ``(i, j)``, ``i < j``, whose 64-bit hashes differ in <= ``radius`` bits.

    Returns an ``(n_pairs, 2)`` int64 array sorted by ``i`` then ``j``. Uses multi-index
    hashing (:func:`_mih_pairs`) where a cost model says it beats comparing every pair, and
    the blockwise all-pairs comparison otherwise (few hashes, or a radius so large that
    almost every pair is a candidate anyway). Memory is bounded either way: about
    ``9 * chunk**2`` bytes per worker for all-pairs; for multi-index hashing, a sorted copy
    of the hashes per block (about 24 bytes a hash) and a fixed number of cells per step.
    ``workers`` threads share the work (numpy releases the GIL).
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64).ravel()
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}.")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}.")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    n = len(hashes)
    plan = _mih_plan(n, radius)
    if plan is None:
        pairs = _all_pairs(hashes, radius, chunk, workers)
    else:
        pairs = _mih_pairs(hashes, radius, plan, workers)
    if len(pairs) == 0:
        return np.empty((0, 2), dtype=np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _all_pairs(hashes: np.ndarray, radius: int, chunk: int, workers: int) -> np.ndarray:
    """Every pair compared, one ``chunk`` x ``chunk`` block (upper triangle) at a time."""
    n = len(hashes)

    def block_row(a: int) -> list[np.ndarray]:
        found = []
        rows = hashes[a : a + chunk, None]
        for b in range(a, n, chunk):
            near = _popcount(rows ^ hashes[None, b : b + chunk]) <= radius
            if a == b:
                near = np.triu(near, k=1)  # i < j, and never a hash with itself
            i, j = np.nonzero(near)
            found.append(np.stack([i + a, j + b], axis=1))
        return found

    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = [p for ps in pool.map(block_row, range(0, n, chunk)) for p in ps]
    return np.concatenate(found).astype(np.int64) if found else np.empty((0, 2), np.int64)


@dataclass(frozen=True)
class _MihPlan:
    # Bits per indexed block, most significant first (low bits may be left out).
    widths: tuple[int, ...]
    radii: tuple[int, ...]  # per block: probe every key within this many bits
    capacities: tuple[int, ...]  # per block: a key's hashes compared densely (the rest: ragged)


# The plan's unit is one cell of a dense comparison (xor, popcount, compare, about 2.5 ns
# here); a numpy call costs a few microseconds, and a group of rows makes about eight.
_CELLS = 1 << 16  # cells per chunk: bounds a step's temporaries (~0.6 MiB, in L2)
_GROUP_COST = 6_000
_MASK_COST = 20_000
_MAX_CAPACITY = 1 << 10  # a key's hashes in one dense comparison: cells per key pair <= 1M
_MAX_WIDTH = 22  # bits per block: 2**22 keys' first positions take 32 MiB


def _capacity(mean: float) -> int:
    """A key's hashes compared densely: three standard deviations over the mean of a
    Poisson-distributed bucket, so that almost none overflow to the ragged path."""
    return math.ceil(mean + 3 * math.sqrt(mean)) + 1


def _quantum(mean: float) -> int:
    """Rows are grouped by their sizes rounded up to a multiple of this: exact sizes for
    small buckets, about a dozen groups per side for large ones (padding ~2 * quantum / mean)."""
    return max(1, round(math.sqrt(mean) / 2))


@functools.lru_cache(maxsize=4096)
def _block_cost(n: int, width: int, radius: int) -> float:
    """Expected cost of one block of ``width`` bits probed within ``radius`` bits."""
    mean = n / 2**width
    capacity = _capacity(mean)
    if capacity > _MAX_CAPACITY or width > _MAX_WIDTH:
        return math.inf
    masks = sum(math.comb(width, k) for k in range(min(radius, width) + 1))
    pairs = 2 ** (width - 1)  # pairs of keys per probe mask
    padded = (mean + _quantum(mean) / 2 + 0.5) ** 2
    groups = min(pairs, (capacity / _quantum(mean)) ** 2 / 2)
    per_mask = pairs * (padded + 4 + 2.4 * mean) + groups * _GROUP_COST + _MASK_COST
    return masks * per_mask + 30 * n


def _mih_plan(n: int, radius: int) -> _MihPlan | None:
    """The cheapest multi-index plan for ``n`` random hashes, or None if all-pairs is cheaper.

    Generalised pigeonhole: index m blocks of the 64 bits, block k probed within r_k bits,
    r_1 + ... + r_m = radius - m + 1. If two hashes differ in <= radius bits, some block
    differs in <= its r_k bits (else they would differ in >= radius + 1 bits); bits left out
    of every block only make this easier. So some blocks can be probed one bit less than
    the plain pigeonhole's radius // m.

    A probe mask pairs every key with key ^ mask and compares the hashes of the two keys,
    all against all (about mean^2 cells per pair of keys; see :func:`_probe_pairs`).
    All-pairs costs n^2 / 2 cells.
    """
    if n < 2:
        return None
    best: tuple[float, _MihPlan] | None = None
    for m in range(1, min(radius + 1, 16) + 1):
        low, wide = divmod(radius - m + 1, m)  # `wide` blocks at low + 1, the others at low
        for w_wide in range(1, _MAX_WIDTH + 1) if wide else [0]:
            for w_low in range(1, _MAX_WIDTH + 1) if m - wide else [0]:
                if wide * w_wide + (m - wide) * w_low > 64:
                    continue
                widths = (w_wide,) * wide + (w_low,) * (m - wide)
                radii = (low + 1,) * wide + (low,) * (m - wide)
                cost = sum(_block_cost(n, w, r) for w, r in zip(widths, radii, strict=True))
                if best is None or cost < best[0]:
                    capacities = tuple(_capacity(n / 2**w) for w in widths)
                    best = (cost, _MihPlan(widths, radii, capacities))
    assert best is not None
    return best[1] if best[0] < n * n / 2 else None


@dataclass(frozen=True)
class _Block:
    """One block's index: the hashes sorted by the block's value (their key), so that a
    key's hashes are one run; a key holds at most ``capacity`` of them in the dense
    comparison, the rest overflow to the ragged path."""

    width: int
    hashes: np.ndarray  # in key order, then ``capacity`` zeros (what a padded cell reads)
    keys: np.ndarray  # in key order
    order: np.ndarray  # the index of each hash in the input, in key order
    starts: np.ndarray  # (2**width + 1,): first position of each key
    capacity: int
    quantum: int  # see _quantum
    overflow: np.ndarray  # positions (key order) of hashes past their key's capacity


def _block(hashes: np.ndarray, shift: int, width: int, capacity: int) -> _Block:
    n = len(hashes)
    capacity = min(capacity, _MAX_CAPACITY)
    keys = ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.intp)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    ordered = np.zeros(n + capacity, dtype=np.uint64)
    ordered[:n] = hashes[order]
    starts = np.zeros((1 << width) + 1, dtype=np.intp)
    np.cumsum(np.bincount(keys, minlength=1 << width), out=starts[1:])
    overflow = np.flatnonzero(np.arange(n) - starts[keys] >= capacity)
    quantum = _quantum(n / 2**width)
    return _Block(width, ordered, keys, order, starts, capacity, quantum, overflow)


def _mih_pairs(hashes: np.ndarray, radius: int, plan: _MihPlan, workers: int) -> np.ndarray:
    """Multi-index hashing (see :func:`_mih_plan`), one job per block and probe mask."""
    n = len(hashes)
    shifts = (64 - np.cumsum(plan.widths)).tolist()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        blocks = list(
            pool.map(_block, itertools.repeat(hashes), shifts, plan.widths, plan.capacities)
        )
        jobs = [
            (block, mask)
            for block, r in zip(blocks, plan.radii, strict=True)
            for mask in _masks(block.width, r)
        ]
        found = [p for ps in pool.map(lambda job: _probe_pairs(*job, radius), jobs) for p in ps]
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    # A pair close in several blocks is found once per such block: one int64 code per pair
    # makes the deduplication a 1-D unique (and sorts by i, then j).
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // n, codes % n], axis=1)


def _probe_pairs(block: _Block, mask: int, radius: int) -> list[np.ndarray]:
    """Codes ``i * n + j`` (i < j) of the pairs within ``radius`` whose keys differ by
    ``mask``; each pair of keys is visited once (from the key whose top bit of mask is 0).

    The pairs of keys are sorted by their two sizes (rounded up to the block's quantum),
    so each group of equal sizes compares the two keys' runs of hashes padded only to its
    own sizes, all cells at once, with no per-pair index arithmetic. Hashes past the
    capacity take the ragged path.
    """
    starts, quantum, capacity = block.starts, block.quantum, block.capacity
    sizes = np.minimum(np.diff(starts), capacity)
    keys = np.arange(1 << block.width)
    top = 1 << (mask.bit_length() - 1) if mask else 0
    own = keys[(keys & top) == 0]
    classes = -(-capacity // quantum) + 1
    group = (-(-sizes[own] // quantum) * classes + -(-sizes[own ^ mask] // quantum)).astype(
        np.int16
    )
    counts = np.bincount(group, minlength=classes * classes)
    ends = np.cumsum(counts).tolist()
    own = own[np.argsort(group, kind="stable")]  # a radix sort
    other = own ^ mask
    first, second = starts[own], starts[other]
    found = []
    for g in np.flatnonzero(counts).tolist():
        c1, c2 = divmod(g, classes)
        if c1 == 0 or c2 == 0:
            continue  # an empty key
        k1, k2 = min(c1 * quantum, capacity), min(c2 * quantum, capacity)
        step = max(1, _CELLS // (k1 * k2))
        for a in range(ends[g] - int(counts[g]), ends[g], step):
            b = min(a + step, ends[g])
            found += _dense_pairs(
                block, (own[a:b], first[a:b], k1), (other[a:b], second[a:b], k2), radius, mask == 0
            )
    # Each hash past the capacity against every hash of the other key that the dense
    # comparison did not pair it with: all of them, or (for the key visited second) the
    # ones within the capacity.
    for a in range(0, len(block.overflow), _MIH_STEP):
        left = block.overflow[a : a + _MIH_STEP]
        key = block.keys[left]
        lo = starts[key ^ mask]
        if mask == 0:
            hi = left  # the same key: every hash before it
        else:
            hi = starts[(key ^ mask) + 1]
            hi = np.where(key & top, np.minimum(hi, lo + capacity), hi)
        found += _ragged_pairs(block, left, lo, hi, radius)
    return found


def _dense_pairs(
    block: _Block,
    left: tuple[np.ndarray, np.ndarray, int],
    right: tuple[np.ndarray, np.ndarray, int],
    radius: int,
    same: bool,
) -> list[np.ndarray]:
    """Codes of the pairs within ``radius`` between the keys of ``left`` and ``right``,
    pair by pair: (keys, their first positions, hashes compared per key) each; every one
    of the k1 hashes against every one of the k2 (only later ones if ``same``)."""
    own, first, k1 = left
    other, second, k2 = right
    hashes = block.hashes
    if k2 >= _BY_ROW:  # (rows, k1, k2): numpy's inner loop runs over a key's hashes
        a = hashes[first[:, None] + _OFFSETS[:k1]]
        b = hashes[second[:, None] + _OFFSETS[:k2]]
        diff = a[:, :, None] ^ b[:, None, :]
    else:  # (k1, k2, rows): over the pairs of keys
        a = hashes[_OFFSETS[:k1, None] + first]
        b = hashes[_OFFSETS[:k2, None] + second]
        diff = a[:, None, :] ^ b[None, :, :]
    count = _popcount(diff)
    if count.min() > radius:  # the usual case: one fast reduction instead of two passes
        return []
    hits = np.flatnonzero(count <= radius)
    if k2 >= _BY_ROW:
        row, c1, c2 = np.unravel_index(hits, diff.shape)
    else:
        c1, c2, row = np.unravel_index(hits, diff.shape)
    key1, key2 = own[row], other[row]
    starts = block.starts
    real = (c1 < starts[key1 + 1] - starts[key1]) & (c2 < starts[key2 + 1] - starts[key2])
    if same:
        real &= c1 < c2
    i = block.order[starts[key1[real]] + c1[real]]
    j = block.order[starts[key2[real]] + c2[real]]
    return [_codes(i, j, len(block.order))]


_BY_ROW = 48  # keys holding this many hashes are compared row-wise, fewer column-wise
_OFFSETS = np.arange(_MAX_CAPACITY)  # positions within a key's run


def _ragged_pairs(
    block: _Block, left: np.ndarray, lo: np.ndarray, hi: np.ndarray, radius: int
) -> list[np.ndarray]:
    """Codes of the pairs within ``radius`` of each ``left[k]`` with positions lo[k]..hi[k]."""
    lengths = np.maximum(hi - lo, 0)
    total = int(lengths.sum())
    if total == 0:
        return []
    lefts = np.repeat(left, lengths)
    rights = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths - lo, lengths)
    near = _popcount(block.hashes[lefts] ^ block.hashes[rights]) <= radius
    i, j = block.order[lefts[near]], block.order[rights[near]]
    return [_codes(i, j, len(block.order))]


def _codes(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """One int64 per pair: ``min * n + max``."""
    return np.minimum(i, j).astype(np.int64) * n + np.maximum(i, j)


_MIH_STEP = 1 << 12  # overflowing hashes per ragged step: bounds the candidates held at once


def _masks(width: int, radius: int) -> list[int]:
    """Every ``width``-bit value with at most ``radius`` bits set."""
    masks = []
    for k in range(min(radius, width) + 1):
        for bits in itertools.combinations(range(width), k):
            masks.append(sum(1 << b for b in bits))
    return masks


def _base(image: Image.Image) -> np.ndarray:
    """Grayscale, BASE_SIDE square, 0..1, flattened: what same_picture works from."""
    small = image.convert("L").resize((BASE_SIDE, BASE_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32).ravel() / 255.0


def _resampling(start: float, stop: float) -> np.ndarray:
    """THUMB_SIDE x BASE_SIDE weights that resample ``[start, stop)`` of an axis (0..1):
    a triangle filter as wide as the step, so every base pixel counts (antialiased)."""
    scale = (stop - start) * BASE_SIDE / THUMB_SIDE
    centres = start * BASE_SIDE + (np.arange(THUMB_SIDE) + 0.5) * scale
    pixels = np.arange(BASE_SIDE) + 0.5
    weights = np.clip(1 - np.abs(pixels[None, :] - centres[:, None]) / max(scale, 1.0), 0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


_STEPS = round(MAX_CROP / CROP_STEP)
# One axis's windows (start, stop): the whole axis first, then every crop within MAX_CROP.
_WINDOWS = [
    (first * CROP_STEP, 1 - last * CROP_STEP)
    for first in range(_STEPS + 1)
    for last in range(_STEPS + 1)
    if first + last <= _STEPS
]
_RESAMPLE = np.stack([_resampling(start, stop) for start, stop in _WINDOWS])


def _thumbnails(bases: np.ndarray) -> np.ndarray:
    """(n, THUMB_SIDE**2): each base's thumbnail of the whole picture."""
    whole = _RESAMPLE[0]
    grid = bases.reshape(-1, BASE_SIDE, BASE_SIDE)
    return (whole @ grid @ whole.T).reshape(len(grid), THUMB_SIDE * THUMB_SIDE)


def _crop_differences(bases: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per row: the smallest mean absolute difference between ``targets`` (thumbnails) and
    the thumbnail of any crop of ``bases`` (every window of x with every window of y).

    Two matrix products over all bases and windows at once: resample the rows, then the
    columns; the result stays in (n, window y, y, window x, x) order, never transposed.
    """
    n, w = len(bases), len(_RESAMPLE)
    flat = _RESAMPLE.reshape(w * THUMB_SIDE, BASE_SIDE)
    grid = bases.reshape(n, BASE_SIDE, BASE_SIDE).transpose(1, 0, 2).reshape(BASE_SIDE, -1)
    rows = (flat @ grid).reshape(w * THUMB_SIDE, n, BASE_SIDE).transpose(1, 0, 2)
    thumbs = (rows.reshape(-1, BASE_SIDE) @ flat.T).reshape(n, w, THUMB_SIDE, w, THUMB_SIDE)
    thumbs -= targets.reshape(n, 1, THUMB_SIDE, 1, THUMB_SIDE)
    np.abs(thumbs, out=thumbs)
    return thumbs.sum(axis=(2, 4)).min(axis=(1, 2)) / THUMB_SIDE**2


def _relit(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``source`` bases with the brightness/contrast change that best turns them into
    ``target``: gain and offset fitted (least squares) on the target's pixels that are not
    clipped at black or white, applied, then clipped to 0..1 as the change itself clips."""
    weight = ((target > 0.02) & (target < 0.98)).astype(np.float32)
    count = weight.sum(axis=1, keepdims=True) + 1e-6
    mean_s = (weight * source).sum(axis=1, keepdims=True) / count
    mean_t = (weight * target).sum(axis=1, keepdims=True) / count
    covariance = (weight * (source - mean_s) * (target - mean_t)).sum(axis=1, keepdims=True)
    variance = (weight * (source - mean_s) ** 2).sum(axis=1, keepdims=True) + 1e-6
    gain = np.clip(covariance / variance, 0.5, 2.0)  # a change, not a different picture
    return np.clip(gain * (source - mean_s) + mean_t, 0.0, 1.0)


def _differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pair of bases (rows of ``a`` and ``b``): the smallest thumbnail difference over
    the crops and the brightness/contrast fit, either way round (see SAME_PICTURE_TOLERANCE)."""
    whole_a, whole_b = _thumbnails(a), _thumbnails(b)
    cropped_a, cropped_b = _crop_differences(a, whole_b), _crop_differences(b, whole_a)
    relit_a = np.abs(_thumbnails(_relit(a, b)) - whole_b).mean(axis=1)
    relit_b = np.abs(_thumbnails(_relit(b, a)) - whole_a).mean(axis=1)
    return np.minimum(np.minimum(cropped_a, cropped_b), np.minimum(relit_a, relit_b))


def same_picture(a: Image.Image, b: Image.Image, tolerance: float = SAME_PICTURE_TOLERANCE) -> bool:
    """Whether ``a`` and ``b`` show the same picture up to resizing, re-encoding, a crop of
    up to MAX_CROP of each axis, and a brightness/contrast change.

    Mean absolute difference of small grayscale thumbnails, in 0..1, after the best crop or
    brightness fit; see SAME_PICTURE_TOLERANCE for how the default was measured.
    """
    return bool(_differences(_base(a)[None], _base(b)[None])[0] <= tolerance)


class _UnionFind:
    """Groups of 0..n-1, in a flat array (8 bytes an image) rather than a list of ints."""

    def __init__(self, n: int) -> None:
        self.parent = array("q", range(n))

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
    rows: Iterable[UrlRow],
    data_dir: Path,
    valid_pct: float = 0.2,
    seed: int = 0,
    radius: int = 10,
    ledger: Ledger | None = None,
    feedback_to_valid: bool = False,
) -> Dataset:
    """Group duplicates, keep one image per group, apply the reviewers' decisions of
    ``ledger`` (removals and relabels, per duplicate group), split the kept ones; write the
    manifest, which records the ledger's path and digest.

    Images from feedback (``source=feedback``) go to the training split, and the split of
    the others is what it would be without them, so the gate's validation data stays
    comparable; ``feedback_to_valid`` splits them like any other image instead.

    ``rows`` are read once, as a stream. What grows with the number of images lives in a
    temporary SQLite database on disk (:class:`_Images`) and in flat arrays of a few bytes
    an image (the perceptual hashes, the groups); Python objects are made for one duplicate
    group at a time.
    """
    if not 0.0 <= valid_pct < 1.0:
        raise ValueError(f"valid_pct must be in [0, 1), got {valid_pct}.")
    data_dir = Path(data_dir)
    with _Images() as images:
        images.add(rows)
        phashes = images.number(data_dir)

        groups = _UnionFind(len(phashes))
        for first, i in images.same_pixels():
            groups.union(first, i)
        for i, j in _confirmed_pairs(phashes, images.image_path, radius, data_dir):
            groups.union(i, j)
        del phashes
        images.set_groups(groups.find(i) for i in range(len(groups.parent)))
        del groups

        decisions = ledger.decisions if ledger is not None and not ledger.empty else {}
        for members in images.groups():
            _mark(members)
            if any(r.sha256 in decisions for r in members):
                members = apply_ledger(members, decisions)
                alive = [r for r in members if r.status != REMOVED]
                if alive:
                    _mark(alive)  # a relabel may have settled a label conflict
            images.add_marked(members, feedback_to_valid)
        images.split(valid_pct, seed)

        conflicts = label_conflicts(images.marked("label_conflict"))
        if conflicts:
            log.warning(
                "%d duplicate groups carry more than one label: %s", len(conflicts), conflicts
            )
        if ledger is None or not ledger.digest:
            return write_dataset(data_dir, images.marked())
        return write_dataset(
            data_dir, images.marked(), ledger_path=ledger.path, ledger_digest=ledger.digest
        )


def _confirmed_pairs(
    phashes: np.ndarray,
    image_path: Callable[[int], str],
    radius: int,
    data_dir: Path,
    chunk: int = 128,
) -> list[tuple[int, int]]:
    """Perceptual-hash candidates that same_picture confirms: the hash only proposes."""
    if len(phashes) == 0:
        return []
    candidates = hamming_pairs(phashes, radius)
    if len(candidates) == 0:
        return []
    # Only the images in some candidate pair are opened again, for their bases (4 KiB each).
    proposed = np.unique(candidates)  # sorted
    bases = np.zeros((len(proposed), BASE_SIDE * BASE_SIDE), dtype=np.float32)
    for k, index in enumerate(proposed):
        with Image.open(data_dir / image_path(int(index))) as opened:
            bases[k] = _base(opened)
    confirmed: list[tuple[int, int]] = []
    # Bounded memory: each pair holds every crop's thumbnail of both images (~0.7 MiB).
    for start in range(0, len(candidates), chunk):
        pairs = candidates[start : start + chunk]
        rows = np.searchsorted(proposed, pairs)
        diff = _differences(bases[rows[:, 0]], bases[rows[:, 1]])
        confirmed += [(int(i), int(j)) for i, j in pairs[diff <= SAME_PICTURE_TOLERANCE]]
    return confirmed


_IMAGE_FIELDS = [f.name for f in fields(ImageRow)]
_COLUMNS = ", ".join(f'"{name}"' for name in _IMAGE_FIELDS)  # "group" is an SQL keyword
_SCHEMA = f"""
CREATE TABLE chosen (
    sha256 TEXT, label TEXT, url TEXT, image_path TEXT, pixel_hash TEXT, phash TEXT,
    width INTEGER, height INTEGER, PRIMARY KEY (sha256, label)
) WITHOUT ROWID;
CREATE TABLE numbered (
    position INTEGER PRIMARY KEY, sha256 TEXT, image_path TEXT, label TEXT, url TEXT,
    width INTEGER, height INTEGER, pixel_hash TEXT, phash TEXT, source TEXT, root INTEGER
);
CREATE TABLE marked ({_COLUMNS});
CREATE TABLE split_groups (label TEXT, "group" TEXT, PRIMARY KEY (label, "group"))
    WITHOUT ROWID;
CREATE TABLE valid_groups (label TEXT, "group" TEXT, PRIMARY KEY (label, "group"))
    WITHOUT ROWID;
"""
_BATCH = 5_000  # rows per executemany


class _Images:
    """The distinct (file, label) pairs of a dataset being built, in a private temporary
    SQLite database: in its page cache up to a few MiB, in a temporary file past that
    (deleted when closed). Stages: :meth:`add` the URL rows, :meth:`number` the distinct
    images in (sha256, label) order (the manifest's order), :meth:`set_groups`, then
    :meth:`add_marked` every group as :func:`_mark` and the ledger leave it, :meth:`split`,
    and read the result back with :meth:`marked`."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")
        self._db.execute("PRAGMA cache_size = -4096")  # KiB: what it holds in memory at most
        self._db.executescript(_SCHEMA)
        self._marked: list[tuple] = []  # rows marked, waiting for one insert of many
        self._split: list[tuple[str, str]] = []

    def __enter__(self) -> _Images:
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.close()

    def add(self, rows: Iterable[UrlRow]) -> None:
        """One entry per distinct (file, label); the same file under two labels is a
        conflict. Of several URLs with the same bytes, the smallest is recorded: independent
        of row order."""
        values = (
            (r.sha256, r.label, r.url, r.image_path, r.pixel_hash, r.phash, r.width, r.height)
            for r in rows
            if r.outcome == OK and r.image_path
        )
        for batch in batches(values, _BATCH):
            self._db.executemany(
                "INSERT INTO chosen VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (sha256, label) DO UPDATE SET url = excluded.url, "
                "image_path = excluded.image_path, pixel_hash = excluded.pixel_hash, "
                "phash = excluded.phash, width = excluded.width, height = excluded.height "
                "WHERE excluded.url < chosen.url",
                batch,
            )
        self._db.commit()

    def number(self, data_dir: Path) -> np.ndarray:
        """Number the images 0..n-1 in (sha256, label) order; return their perceptual hashes.

        Verification computes the hashes in its worker processes and leaves them on the rows;
        a row without them (an older manifest) is decoded here.
        """
        phashes = array("Q")
        decoded: tuple[str, tuple[str, int, int, int]] | None = None  # the last file decoded
        found = self._db.execute(
            "SELECT sha256, label, url, image_path, pixel_hash, phash, width, height "
            "FROM chosen ORDER BY sha256, label"
        )
        numbered = []
        for sha, label, url, image_path, pix, ph, width, height in found:
            if not (pix and ph and width and height):
                if decoded is None or decoded[0] != sha:
                    with Image.open(data_dir / image_path) as im:
                        im = im.convert("RGB")
                        decoded = (sha, (pixel_hash(im), phash(im), *im.size))
                pix, ph_int, width, height = decoded[1]
            else:
                ph_int = int(ph, 16)
            source = FEEDBACK if url.startswith(URL_SCHEME) else ""
            numbered.append(
                (
                    len(phashes),
                    sha,
                    image_path,
                    label,
                    url,
                    width,
                    height,
                    pix,
                    f"{ph_int:016x}",
                    source,
                )
            )
            phashes.append(ph_int)
            if len(numbered) == _BATCH:
                self._insert_numbered(numbered)
                numbered = []
        self._insert_numbered(numbered)
        self._db.execute("DELETE FROM chosen")
        self._db.commit()
        return np.frombuffer(phashes, dtype=np.uint64) if phashes else np.zeros(0, np.uint64)

    def _insert_numbered(self, values: list[tuple]) -> None:
        self._db.executemany(
            "INSERT INTO numbered VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)", values
        )

    def same_pixels(self) -> Iterator[tuple[int, int]]:
        """(first, i) for each image whose pixels an earlier-numbered image has: exact
        duplicates across encodings."""
        first, last = -1, None
        found = self._db.execute(
            "SELECT position, pixel_hash FROM numbered ORDER BY pixel_hash, position"
        )
        for position, pix in found:
            if pix != last:
                first, last = position, pix
            else:
                yield first, position

    def image_path(self, position: int) -> str:
        found = self._db.execute(
            "SELECT image_path FROM numbered WHERE position = ?", (position,)
        ).fetchone()
        return found[0]

    def set_groups(self, roots: Iterable[int]) -> None:
        """Each image's duplicate group, in numbering order: the number of one member."""
        numbered = ((root, position) for position, root in enumerate(roots))
        for batch in batches(numbered, _BATCH):
            self._db.executemany("UPDATE numbered SET root = ? WHERE position = ?", batch)
        self._db.commit()

    def groups(self) -> Iterator[list[ImageRow]]:
        """The images, one duplicate group at a time, members in numbering order."""
        found = self._db.execute(
            "SELECT root, sha256, image_path, label, url, width, height, pixel_hash, phash, "
            "source FROM numbered ORDER BY root, position"
        )
        members: list[ImageRow] = []
        current = None
        for root, sha, image_path, label, url, width, height, pix, ph, source in found:
            if root != current and members:
                yield members
                members = []
            current = root
            members.append(
                ImageRow(
                    sha256=sha,
                    image_path=image_path,
                    label=label,
                    url=url,
                    width=width,
                    height=height,
                    pixel_hash=pix,
                    phash=ph,
                    group="",
                    source=source,
                )
            )
        if members:
            yield members

    def add_marked(self, rows: list[ImageRow], feedback_to_valid: bool) -> None:
        """The rows of one group as marked. Its kept row takes part in the train/valid split
        unless it came from feedback (then it trains) and ``feedback_to_valid`` is off."""
        self._marked += [tuple(vars(r).values()) for r in rows]
        self._split += [
            (r.label, r.group)
            for r in rows
            if r.status == "kept" and (feedback_to_valid or r.source != FEEDBACK)
        ]
        if len(self._marked) >= _BATCH:
            self._flush_marked()

    def _flush_marked(self) -> None:
        marks = ", ".join("?" * len(_IMAGE_FIELDS))
        self._db.executemany(f"INSERT INTO marked VALUES ({marks})", self._marked)
        self._db.executemany("INSERT OR IGNORE INTO split_groups VALUES (?, ?)", self._split)
        self._marked, self._split = [], []

    def split(self, valid_pct: float, seed: int) -> None:
        """Set the split of every kept row: per label, the first groups in seeded order go
        to validation (:mod:`tasks.splits`), every other kept row trains. SQLite sorts the
        groups, by their rank, on disk rather than in Python memory."""
        self._flush_marked()
        self._db.create_function(
            "group_rank", 1, lambda group: group_rank(group, seed), deterministic=True
        )
        labels = [label for (label,) in self._db.execute("SELECT DISTINCT label FROM split_groups")]
        for label in labels:  # a class at a time: few
            (n_groups,) = self._db.execute(
                "SELECT COUNT(*) FROM split_groups WHERE label = ?", (label,)
            ).fetchone()
            self._db.execute(
                'INSERT INTO valid_groups SELECT label, "group" FROM split_groups '
                'WHERE label = ? ORDER BY group_rank("group") LIMIT ?',
                (label, valid_group_count(n_groups, valid_pct)),
            )
        self._db.execute(
            "UPDATE marked SET split = CASE WHEN EXISTS (SELECT 1 FROM valid_groups AS v "
            'WHERE v.label = marked.label AND v."group" = marked."group") '
            "THEN 'valid' ELSE 'train' END WHERE status = 'kept'"
        )
        self._db.commit()

    def marked(self, status: str = "") -> Iterator[ImageRow]:
        """The marked rows in (sha256, label) order, the manifest's (only those of
        ``status``, if given)."""
        where = "WHERE status = ?" if status else ""
        found = self._db.execute(
            f"SELECT {_COLUMNS} FROM marked {where} ORDER BY sha256, label",
            (status,) if status else (),
        )
        for values in found:
            yield ImageRow(*values)


def _mark(group: list[ImageRow]) -> None:
    """Set status, group and duplicate_of for the members of one duplicate group."""
    # A listed image before a feedback copy of it: the validation split keeps its members.
    best = min(group, key=lambda r: (r.source == FEEDBACK, -r.width * r.height, r.sha256))
    conflict = len({r.label for r in group}) > 1
    for r in group:
        r.group = best.sha256
        r.duplicate_of = ""
        if conflict:
            # We cannot know which label is right, so none of them is kept.
            r.status = "label_conflict"
        elif r is best:
            r.status = "kept"
        else:
            r.status = "duplicate" if r.pixel_hash == best.pixel_hash else "near_duplicate"
            r.duplicate_of = best.sha256


def status_counts(rows: Iterable[ImageRow]) -> dict[str, int]:
    """How many images are kept, duplicate, near_duplicate and label_conflict (and removed,
    by a reviewer through the cleaning ledger, when there are any)."""
    counts = Counter(r.status for r in rows)
    found = {status: counts.get(status, 0) for status in STATUSES}
    if counts.get(REMOVED):
        found[REMOVED] = counts[REMOVED]
    return found


def label_conflicts(rows: Iterable[ImageRow]) -> dict[str, list[str]]:
    """Duplicate groups whose members carry different labels: group -> sorted labels."""
    labels: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r.status == "label_conflict":
            labels[r.group].add(r.label)
    return {group: sorted(found) for group, found in sorted(labels.items())}


def dedup_manifest(
    url_manifest: Path,
    data_dir: Path,
    valid_pct: float = 0.2,
    seed: int = 0,
    ledger: Ledger | None = None,
    feedback_to_valid: bool = False,
) -> Dataset:
    """:func:`build_dataset` from the URL manifest at ``url_manifest``, read as a stream."""
    rows = iter_rows(Path(url_manifest), UrlRow)
    return build_dataset(
        rows,
        data_dir,
        valid_pct=valid_pct,
        seed=seed,
        ledger=ledger,
        feedback_to_valid=feedback_to_valid,
    )


dedup_task = task(name="dedup", cache_policy=NONE)(dedup_manifest)
