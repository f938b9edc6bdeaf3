"""Dedup: near-duplicate search speed, and dedup quality on the digits with injected copies.

    .venv/bin/python benchmarks/bench_dedup.py [--sizes 10000,100000,1000000] [--copies 200]

1. Search. 64-bit hashes (uniformly random, plus 1% near copies 1-8 bits away) searched
   at Hamming radius 10 with ``tasks.dedup.hamming_pairs`` (multi-index hashing, 2 threads)
   against the blockwise all-pairs comparison it replaced (vectorised popcount, one
   thread) on the same hashes, up to 100,000 (all-pairs at 1M would take hours). Peak
   memory of each call is measured with tracemalloc (numpy reports its buffers there), in
   a second call: the timed one runs untraced.
2. Quality. The 1,797 embedded digits (32 px) plus, for ``--copies`` originals per
   transform, a resized (48 px), JPEG re-encoded (quality 30), cropped (1 px of 32 off two
   sides: 3%) and brightened (x1.3) copy. Ursa's dedup (pHash within 10 bits, confirmed at
   pixel level, crops of up to 5% and brightness/contrast changes allowed) against
   imagededup's PHash at its default threshold (10) on the same images.
   Recall: share of copies grouped with their original. Precision: share of the pairs a
   method reports that involve a copy of that transform and are true.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path

# Runs as `python benchmarks/X.py` and as `python -m benchmarks.X`: the repository root first.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image, ImageEnhance  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from tasks.dedup import _all_pairs, hamming_pairs, phash, same_picture  # noqa: E402

TRANSFORMS = {
    "resize": lambda im: im.resize((48, 48), Image.Resampling.BICUBIC),
    "jpeg": lambda im: _decode(_encode(im, "JPEG", quality=30)),
    "crop": lambda im: im.crop((1, 1, im.width, im.height)),  # 1 px of 32 off two sides: 3%
    "brightness": lambda im: ImageEnhance.Brightness(im).enhance(1.3),
}


def _encode(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def _timed(fn, *args, peak: bool = True):  # type: ignore[no-untyped-def]
    """Result, seconds and peak MiB (NaN if not ``peak``). Timed untraced: tracemalloc
    slows every allocation, and the search makes many small ones (3x its time at 100k);
    the peak comes from a second, traced call."""
    started = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - started
    if not peak:
        return result, seconds, float("nan")
    tracemalloc.start()
    fn(*args)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, traced / 2**20


def bench_search(sizes: list[int], radius: int, baseline_max: int, peak: bool = True) -> list[str]:
    rng = np.random.default_rng(0)
    lines = []
    print(
        f"{'hashes':>9} {'pairs':>7} {'ursa s':>8} {'MiB':>6} {'all-pairs s':>12} {'MiB':>6} ratio"
    )
    for n in sizes:
        base = rng.integers(0, 2**64, n - n // 100, dtype=np.uint64)
        near = base[: n // 100].copy()
        for _ in range(rng.integers(1, 9)):
            near ^= np.uint64(1) << rng.integers(0, 64, len(near), dtype=np.uint64)
        hashes = np.concatenate([base, near])
        pairs, seconds, mib = _timed(hamming_pairs, hashes, radius, peak=peak)
        row = f"{n:>9} {len(pairs):>7} {seconds:>8.2f} {mib:>6.0f}"
        if n <= baseline_max:
            ref, ref_seconds, ref_peak = _timed(_all_pairs, hashes, radius, 4096, 1, peak=peak)
            ref = ref[np.lexsort((ref[:, 1], ref[:, 0]))]
            assert np.array_equal(ref, pairs), "multi-index hashing disagrees with all-pairs"
            row += f" {ref_seconds:>12.2f} {ref_peak:>6.0f} {ref_seconds / seconds:5.1f}x"
            lines.append(
                f"near-duplicate search, {n:,} hashes, radius {radius}: {seconds:.2f} s, "
                f"{ref_seconds / seconds:.1f}x all-pairs"
                + (" (goal under 10 s)" if n == 100_000 else "")
            )
        else:
            lines.append(
                f"near-duplicate search, {n:,} hashes, radius {radius}: {seconds:.1f} s, "
                + (f"peak {mib:.0f} MiB " if peak else "")
                + "(all-pairs not run)"
            )
        print(row, flush=True)
    return lines


def _quality_set(copies: int) -> tuple[list[Image.Image], list[int], list[str]]:
    """Images, the index of the original each one shows, and its transform ('' if original)."""
    digits = load_digits()
    gray = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = [
        Image.fromarray(x).resize((32, 32), Image.Resampling.BICUBIC).convert("RGB") for x in gray
    ]
    origin = list(range(len(images)))
    kind = [""] * len(images)
    rng = np.random.default_rng(1)
    for name, transform in TRANSFORMS.items():
        for i in rng.choice(len(gray), copies, replace=False):
            images.append(transform(images[i]))
            origin.append(int(i))
            kind.append(name)
    return images, origin, kind


def _ursa_pairs(images: list[Image.Image]) -> set[tuple[int, int]]:
    hashes = np.array([phash(im) for im in images], dtype=np.uint64)
    candidates = hamming_pairs(hashes, 10)
    return {(int(i), int(j)) for i, j in candidates if same_picture(images[i], images[j])}


def _imagededup_pairs(images: list[Image.Image]) -> set[tuple[int, int]] | None:
    try:
        from imagededup.methods import PHash
    except ImportError:
        return None
    method = PHash(verbose=False)
    encodings = {
        str(i): method.encode_image(image_array=np.asarray(im)) for i, im in enumerate(images)
    }
    found = method.find_duplicates(encoding_map=encodings, max_distance_threshold=10)
    return {tuple(sorted((int(a), int(b)))) for a, dups in found.items() for b in dups}


def _scores(
    pairs: set[tuple[int, int]], origin: list[int], kind: list[str]
) -> dict[str, tuple[float, float]]:
    """Per transform: (precision, recall); recall counts a copy grouped with its original."""
    parent = list(range(len(origin)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[find(i)] = find(j)
    tp: dict[str, int] = defaultdict(int)
    fp: dict[str, int] = defaultdict(int)
    for i, j in pairs:
        true = origin[i] == origin[j]
        for name in {kind[i], kind[j]} - {""} or {""}:
            (tp if true else fp)[name] += 1
    out = {}
    for name in ["", *TRANSFORMS]:
        precision = tp[name] / (tp[name] + fp[name]) if tp[name] + fp[name] else 1.0
        copies = [i for i, k in enumerate(kind) if k == name]
        if name:
            recall = sum(find(i) == find(origin[i]) for i in copies) / len(copies)
        else:
            recall = float("nan")  # originals have no copy to find
        out[name or "originals"] = (precision, recall)
    return out


def bench_quality(copies: int) -> list[str]:
    images, origin, kind = _quality_set(copies)
    print(f"{len(images)} images: 1,797 digits + {copies} copies x {len(TRANSFORMS)} transforms")
    ursa_pairs = _ursa_pairs(images)
    ursa = _scores(ursa_pairs, origin, kind)
    reference_pairs = _imagededup_pairs(images)
    if reference_pairs is None:
        print("imagededup is not installed (pip install imagededup): no reference")
    reference = _scores(reference_pairs, origin, kind) if reference_pairs is not None else None
    print(f"{'':12} {'ursa P':>8} {'ursa R':>8} {'imagededup P':>13} {'imagededup R':>13}")
    for name, (p, r) in ursa.items():
        ref = f"{reference[name][0]:>13.3f} {reference[name][1]:>13.3f}" if reference else ""
        print(f"{name:12} {p:>8.3f} {r:>8.3f} {ref}")
    lines = []
    for name in ("resize", "jpeg"):
        p, r = ursa[name]
        ref = ""
        if reference:
            ref_p, ref_r = reference[name]
            ref = f"; imagededup PHash: recall {ref_r:.3f}, precision {ref_p:.3f}"
        lines.append(
            f"dedup {name}: recall {r:.3f} at precision {p:.3f} "
            f"(goal recall 0.95 at precision 0.99){ref}"
        )
    for name in ("crop", "brightness"):
        p, r = ursa[name]
        lines.append(f"dedup {name}: recall {r:.3f} at precision {p:.3f} (no goal)")
    # The digits hold no known duplicates, so every pair of two originals is a false merge.
    ursa_false = sum(kind[i] == kind[j] == "" for i, j in ursa_pairs)
    line = f"dedup pairs of distinct originals merged: {ursa_false}"
    if reference_pairs is not None:
        ref_false = sum(kind[i] == kind[j] == "" for i, j in reference_pairs)
        line += f" (imagededup PHash: {ref_false})"
    lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--radius", type=int, default=10)
    parser.add_argument("--baseline-max", type=int, default=100_000)
    parser.add_argument("--copies", type=int, default=200)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print("== dedup quality ==")
    summary = bench_quality(args.copies)
    print("\n== near-duplicate search ==")
    summary += bench_search(sizes, args.radius, args.baseline_max)
    print()
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
