"""Deduplication and the train/valid split: verified images in, one dataset manifest out.

Exact duplicates (same bytes, or same pixels in another encoding) are found by hash.
Near duplicates (resized, re-encoded, slightly cropped, brightened or contrasted) are proposed
by a 64-bit perceptual hash and confirmed at pixel level: on small, similar pictures such as
the 8x8 digits, thousands of *distinct* images lie within a few bits of each other, so a hash
alone would delete real data.
"""

from __future__ import annotations

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
    ``9 * chunk**2`` bytes per worker for all-pairs, a fixed number of candidates per step
    for multi-index hashing. ``workers`` threads share the work (numpy releases the GIL).
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
    widths: tuple[int, ...]  # bits per block, most significant block first
    sub_radius: int  # some block of a pair within `radius` differs in <= this many bits


def _mih_plan(n: int, radius: int, max_block_bits: int = 22) -> _MihPlan | None:
    """The cheapest multi-index plan for ``n`` random hashes, or None if all-pairs is cheaper.

    Pigeonhole: split 64 bits into m blocks; if two hashes differ in <= radius bits, some
    block differs in <= radius // m bits. Each hash looks up, per block, every block value
    within that sub-radius (the "probes"), and compares itself with what it finds (the
    "candidates"). Expected work for uniformly random hashes: n * m * probes lookups plus
    n^2 * m * probes / 2^bits / 2 candidates; all-pairs costs n^2 / 2.
    """
    best: tuple[float, _MihPlan] | None = None
    for m in range(-(-64 // max_block_bits), 17):
        widths = tuple(64 // m + (1 if k < 64 % m else 0) for k in range(m))
        sub = radius // m
        probes = sum(math.comb(widths[0], k) for k in range(min(sub, widths[0]) + 1))
        cost = n * m * probes * (1 + n / 2 ** widths[-1] / 2)
        if best is None or cost < best[0]:
            best = (cost, _MihPlan(widths, sub))
    assert best is not None
    # Each lookup and candidate costs a few numpy passes; a compared pair costs about one.
    return best[1] if 4 * best[0] < n * n / 2 else None


def _mih_pairs(hashes: np.ndarray, radius: int, plan: _MihPlan, workers: int) -> np.ndarray:
    """Multi-index hashing: per block, sort by the block's value, probe every value within
    the sub-radius, and compare the full hashes of what the probes find; no pair loop.
    """
    n = len(hashes)
    jobs: list[tuple[int, int, int]] = []  # (shift, width, probe mask)
    shift = 64
    for width in plan.widths:
        shift -= width
        for mask in _masks(width, plan.sub_radius):
            jobs.append((shift, width, mask))
    indexes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    shift = 64
    for width in plan.widths:
        shift -= width
        keys = ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        starts = np.zeros((1 << width) + 1, dtype=np.int64)
        np.cumsum(np.bincount(keys, minlength=1 << width), out=starts[1:])
        indexes[shift] = (keys[order], hashes[order], order, starts)

    def probe(job: tuple[int, int, int]) -> list[np.ndarray]:
        shift, _, mask = job
        keys, sorted_hashes, order, starts = indexes[shift]
        found = []
        step = _MIH_STEP
        for a in range(0, n, step):
            own = keys[a : a + step]
            other = own ^ mask
            lo = starts[other]
            hi = starts[other + 1]
            positions = np.arange(a, a + len(own))
            if mask == 0:
                lo = np.maximum(lo, positions + 1)  # same bucket: each pair once, i < j
            else:
                hi = np.where(own < other, hi, lo)  # two buckets: visit the pair from one side
            lengths = np.maximum(hi - lo, 0)
            total = int(lengths.sum())
            if total == 0:
                continue
            left = np.repeat(positions, lengths)
            right = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths - lo, lengths)
            near = _popcount(sorted_hashes[left] ^ sorted_hashes[right]) <= radius
            i, j = order[left[near]], order[right[near]]
            found.append(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1))
        return found

    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = [p for ps in pool.map(probe, jobs) for p in ps]
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    # A pair close in several blocks is found once per such block.
    return np.unique(np.concatenate(found).astype(np.int64), axis=0)


_MIH_STEP = 1 << 16  # hashes per probe step: bounds the candidates held at once


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
