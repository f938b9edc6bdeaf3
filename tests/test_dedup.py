"""tasks.dedup: exact and near duplicates grouped, distinct pictures kept apart, split fixed."""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from sklearn.datasets import load_digits

from tasks.dedup import (
    SAME_PICTURE_TOLERANCE,
    _base,
    _differences,
    build_dataset,
    hamming_pairs,
    label_conflicts,
    phash,
    pixel_hash,
    same_picture,
    status_counts,
)
from tasks.manifest import Dataset, ImageRow, UrlRow, read_rows
from tests.images import encode
from ursa.feedback import FEEDBACK, URL_SCHEME


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def verified(data_dir: Path, im: Image.Image, label: str, url: str, **png) -> UrlRow:
    """A row as verification leaves it; the file's name is the hash of its bytes."""
    data = encode(im.convert("RGB"), "PNG", **png)
    sha = hashlib.sha256(data).hexdigest()
    path = data_dir / "images" / f"{sha}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return UrlRow(
        url=url,
        label=label,
        outcome="ok",
        sha256=sha,
        raw_path=f"raw/{sha}.png",
        image_path=f"images/{sha}.png",
        width=im.width,
        height=im.height,
    )


def noise(seed: int, side: int = 32) -> Image.Image:
    """A distinct picture per seed: smooth enough to survive resizing, unlike any other."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return small.resize((side, side), Image.Resampling.BICUBIC)


def bits_apart(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def manifest(dataset: Dataset) -> list[ImageRow]:
    return read_rows(Path(dataset.manifest_path), ImageRow)


# --- hashes -------------------------------------------------------------------------------


def test_phash_is_stable_and_close_for_a_resized_copy() -> None:
    im = noise(1, side=64)
    assert phash(im) == phash(im.copy()) == phash(decode(encode(im, "PNG")))
    assert 0 <= phash(im) < 2**64
    assert bits_apart(phash(im), phash(im.resize((100, 100), Image.Resampling.BICUBIC))) <= 4
    assert bits_apart(phash(im), phash(decode(encode(im, "JPEG", quality=40)))) <= 6
    assert bits_apart(phash(im), phash(noise(2, side=64))) > 10


def test_pixel_hash_sees_through_encodings() -> None:
    im = noise(3)
    a, b = encode(im, "PNG", compress_level=0), encode(im, "PNG", compress_level=9)
    assert a != b
    assert pixel_hash(decode(a)) == pixel_hash(decode(b)) == pixel_hash(im)
    assert pixel_hash(im) != pixel_hash(noise(4))
    assert pixel_hash(Image.new("RGB", (2, 8))) != pixel_hash(Image.new("RGB", (8, 2)))


def brute_force_pairs(hashes: np.ndarray, radius: int) -> set[tuple[int, int]]:
    values = [int(h) for h in hashes]
    return {
        (i, j)
        for i in range(len(values))
        for j in range(i + 1, len(values))
        if bits_apart(values[i], values[j]) <= radius
    }


@pytest.mark.parametrize("radius", [0, 1, 3, 10, 24, 64])
@pytest.mark.parametrize("chunk", [1, 17, 4096])
def test_hamming_pairs_matches_brute_force(radius: int, chunk: int) -> None:
    rng = np.random.default_rng(radius)
    base = rng.integers(0, 2**64, 60, dtype=np.uint64)
    # Near copies (one to three bits flipped) and exact repeats, so small radii find pairs too.
    near = base.copy()
    for _ in range(3):
        near ^= np.uint64(1) << rng.integers(0, 64, 60, dtype=np.uint64)
    hashes = np.concatenate([base, near, base[:5]])
    rng.shuffle(hashes)
    pairs = hamming_pairs(hashes, radius, chunk=chunk)
    assert pairs.dtype == np.int64 and pairs.shape[1] == 2
    assert [tuple(p) for p in pairs.tolist()] == sorted(brute_force_pairs(hashes, radius))


def test_hamming_pairs_edge_cases() -> None:
    assert hamming_pairs(np.array([], dtype=np.uint64), 5).shape == (0, 2)
    assert hamming_pairs(np.array([7], dtype=np.uint64), 64).shape == (0, 2)
    top = np.array([2**64 - 1, 0], dtype=np.uint64)  # the full 64 bits are counted
    assert hamming_pairs(top, 63).shape == (0, 2)
    assert hamming_pairs(top, 64).tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="radius"):
        hamming_pairs(top, -1)


# --- the digits: the hash proposes, the pixels decide --------------------------------------


def render_digit(pixels: np.ndarray) -> Image.Image:
    """An 8x8 digit (0..16) as a 32 px grayscale PNG, as the demo image host serves it."""
    gray = np.clip(np.rint(pixels * 255 / 16), 0, 255).astype(np.uint8)
    im = Image.fromarray(gray, "L").resize((32, 32), Image.Resampling.BICUBIC)
    return decode(encode(im, "PNG"))


COPIES = {
    "resize48": lambda im: im.resize((48, 48), Image.Resampling.BICUBIC),
    "jpeg60": lambda im: decode(encode(im, "JPEG", quality=60)),
    "jpeg30": lambda im: decode(encode(im, "JPEG", quality=30)),
}
# Not always proposed by the hash (a crop moves about 7% of them past 10 bits), so they are
# checked at pixel level only, against the same tolerance.
HARDER_COPIES = {
    "crop": lambda im: im.crop((1, 1, im.width, im.height)),  # 1 px of 32 off two sides
    "crop_far_sides": lambda im: im.crop((0, 0, im.width - 1, im.height - 1)),
    "brightness": lambda im: ImageEnhance.Brightness(im).enhance(1.3),
    "darker": lambda im: ImageEnhance.Brightness(im).enhance(0.7),
    "contrast": lambda im: ImageEnhance.Contrast(im).enhance(1.3),
}


@pytest.fixture(scope="module")
def digits() -> tuple[list[Image.Image], np.ndarray]:
    bunch = load_digits()
    return [render_digit(x) for x in bunch.images], bunch.target


def test_tolerance_separates_copies_from_distinct_digits(digits) -> None:
    """The calibration behind SAME_PICTURE_TOLERANCE (its comment quotes these figures)."""
    originals, _ = digits
    bases = np.stack([_base(im) for im in originals])
    copy_max = {
        name: float(_differences(bases, np.stack([_base(make(im)) for im in originals])).max())
        for name, make in COPIES.items()
    }
    some = range(0, len(originals), 2)  # half of them: the crop search costs ~1 ms a pair
    copy_max |= {
        name: float(
            _differences(bases[some], np.stack([_base(make(originals[k])) for k in some])).max()
        )
        for name, make in HARDER_COPIES.items()
    }
    hashes = np.array([phash(im) for im in originals], dtype=np.uint64)
    close = hamming_pairs(hashes, 10)
    distinct = _differences(bases[close[:, 0]], bases[close[:, 1]])
    print(f"copies max {copy_max}; {len(close)} hash-close pairs, min {distinct.min():.4f}")
    assert len(close) > 1000  # the hash alone would merge thousands of distinct digits
    assert max(copy_max.values()) < SAME_PICTURE_TOLERANCE < distinct.min()


def test_digits_copies_are_found_and_distinct_digits_never_merged(data_dir, digits) -> None:
    originals, targets = digits
    rows = [
        verified(data_dir, im, str(targets[k]), f"http://d/{k}") for k, im in enumerate(originals)
    ]
    copied = range(0, len(originals), 9)  # 200 originals, three copies each
    origin_of: dict[str, int] = {}
    for k in copied:
        for name, make in COPIES.items():
            row = verified(data_dir, make(originals[k]), str(targets[k]), f"http://c/{name}/{k}")
            rows.append(row)
            origin_of[row.sha256] = k
    dataset = build_dataset(rows, data_dir)
    by_sha = {r.sha256: r for r in manifest(dataset)}

    original_groups = [by_sha[row.sha256].group for row in rows[: len(originals)]]
    assert len(set(original_groups)) == len(originals)  # no two distinct digits merged
    for sha, k in origin_of.items():
        assert by_sha[sha].group == original_groups[k]  # every copy joins its original
    counts = status_counts(by_sha.values())
    assert counts == {
        "kept": len(originals),
        "duplicate": 0,
        "near_duplicate": 3 * len(copied),
        "label_conflict": 0,
    }
    # The 48 px copy is the largest of its group, so it is the one kept.
    kept_copy = {
        origin_of[r.sha256] for r in by_sha.values() if r.status == "kept" and r.width == 48
    }
    assert kept_copy == set(copied)


# --- exact duplicates, conflicts, the split -----------------------------------------------


def test_exact_duplicates_same_bytes_and_same_pixels(data_dir: Path) -> None:
    im = noise(5)
    rows = [
        verified(data_dir, im, "cat", "http://b/same.png"),
        verified(data_dir, im, "cat", "http://a/same.png"),  # same bytes, another URL
        verified(data_dir, im, "cat", "http://a/other.png", compress_level=0),  # same pixels
        verified(data_dir, noise(6), "cat", "http://a/different.png"),
        UrlRow(url="http://a/gone", label="cat", outcome="timeout"),
    ]
    assert rows[0].sha256 == rows[1].sha256 != rows[2].sha256
    dataset = build_dataset(rows, data_dir)
    out = manifest(dataset)
    assert len(out) == 3  # one row per distinct file
    by_sha = {r.sha256: r for r in out}
    assert by_sha[rows[0].sha256].url == "http://a/same.png"  # smallest URL, whatever the order
    kept = min(rows[0].sha256, rows[2].sha256)  # same size: the smallest sha256 is kept
    dup = max(rows[0].sha256, rows[2].sha256)
    assert by_sha[kept].status == "kept" and by_sha[kept].split in ("train", "valid")
    assert by_sha[dup].status == "duplicate"
    assert by_sha[dup].duplicate_of == kept == by_sha[dup].group
    assert by_sha[dup].split == ""
    assert status_counts(out) == {
        "kept": 2,
        "duplicate": 1,
        "near_duplicate": 0,
        "label_conflict": 0,
    }


def test_label_conflict_keeps_nothing_and_is_reported(data_dir: Path) -> None:
    im = noise(7)
    rows = [
        verified(data_dir, im, "cat", "http://a/1.png"),
        verified(data_dir, im.resize((48, 48), Image.Resampling.BICUBIC), "dog", "http://a/2.png"),
        verified(data_dir, noise(8), "dog", "http://a/3.png"),
        verified(data_dir, noise(9), "dog", "http://a/4.png"),
        verified(data_dir, noise(9), "cat", "http://a/5.png"),  # same bytes under two labels
    ]
    out = manifest(build_dataset(rows, data_dir))
    assert status_counts(out) == {
        "kept": 1,
        "duplicate": 0,
        "near_duplicate": 0,
        "label_conflict": 4,
    }
    conflicts = label_conflicts(out)
    assert len(conflicts) == 2 and all(labels == ["cat", "dog"] for labels in conflicts.values())
    assert all(r.split == "" for r in out if r.status == "label_conflict")


def split_rows(data_dir: Path, relabel: int | None = None) -> list[UrlRow]:
    labels = ["cat"] * 20 + ["dog"] * 10
    if relabel is not None:
        labels[relabel] = "dog"
    return [
        verified(data_dir, noise(100 + k), lab, f"http://s/{k}") for k, lab in enumerate(labels)
    ]


def test_split_is_stratified_and_deterministic(tmp_path: Path) -> None:
    runs = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        d = tmp_path / name
        ds = build_dataset(split_rows(d), d, valid_pct=0.2, seed=seed)
        runs[name] = (ds, {r.sha256: r.split for r in manifest(ds)})
        assert (ds.n_train, ds.n_valid) == (24, 6)
        rows = manifest(ds)
        assert sum(r.split == "valid" for r in rows if r.label == "cat") == 4
        assert sum(r.split == "valid" for r in rows if r.label == "dog") == 2
    assert runs["a"][0].digest == runs["b"][0].digest  # a rerun: the same dataset
    assert runs["a"][1] == runs["b"][1]
    assert runs["a"][1] != runs["c"][1]  # another seed, another split
    assert runs["a"][0].digest != runs["c"][0].digest

    d = tmp_path / "relabelled"
    relabelled = build_dataset(split_rows(d, relabel=0), d, valid_pct=0.2, seed=0)
    assert relabelled.digest != runs["a"][0].digest
    assert relabelled.classes == ("cat", "dog")


def test_invalid_valid_pct_is_named(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="valid_pct.*1.5"):
        build_dataset([], data_dir, valid_pct=1.5)


def test_same_picture_accepts_copies_and_rejects_other_pictures() -> None:
    im = noise(10, side=64)
    assert same_picture(im, im.resize((40, 40), Image.Resampling.BICUBIC))
    assert same_picture(im, decode(encode(im, "JPEG", quality=30)))
    assert same_picture(im, im.crop((2, 0, 64, 62)))  # 3% off two sides
    assert same_picture(im.crop((0, 1, 63, 64)), im)  # either way round
    assert same_picture(im, ImageEnhance.Brightness(im).enhance(1.25))
    assert same_picture(ImageEnhance.Contrast(im).enhance(0.8), im)
    assert not same_picture(im, noise(11, side=64))
    assert not same_picture(im, im.crop((8, 8, 64, 64)))  # 12%: another framing
    assert not same_picture(im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


@pytest.mark.parametrize("radius", [0, 2, 6, 10])
def test_multi_index_hashing_agrees_with_all_pairs(radius: int) -> None:
    from tasks.dedup import _all_pairs, _mih_plan

    rng = np.random.default_rng(radius)
    base = rng.integers(0, 2**64, 4000, dtype=np.uint64)
    near = base[:400].copy()
    for _ in range(4):  # 1 to 4 flipped bits (flips may repeat)
        near ^= np.uint64(1) << rng.integers(0, 64, 400, dtype=np.uint64)
    hashes = np.concatenate([base, near, base[:50]])
    assert _mih_plan(len(hashes), radius) is not None  # the path under test
    pairs = hamming_pairs(hashes, radius)
    expected = _all_pairs(hashes, radius, 1024, 1)
    expected = expected[np.lexsort((expected[:, 1], expected[:, 0]))]
    assert np.array_equal(pairs, expected)
    assert len(pairs) >= 50  # the exact repeats at least


def _planted(n: int, seed: int) -> np.ndarray:
    """Random hashes, a tenth of them copied with 1 to 6 bits flipped, a few exact repeats
    and zeros (a crowded key), shuffled."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, n, dtype=np.uint64)
    near = base[: n // 10].copy()
    for _ in range(6):
        near ^= np.uint64(1) << rng.integers(0, 64, len(near), dtype=np.uint64)
    hashes = np.concatenate([base, near, base[:7], np.zeros(5, dtype=np.uint64)])
    rng.shuffle(hashes)
    return hashes


@pytest.mark.parametrize("n", [40, 900])
@pytest.mark.parametrize("radius", [0, 3, 6, 10])
def test_every_multi_index_plan_finds_exactly_the_all_pairs_result(n: int, radius: int) -> None:
    """Whatever the plan (blocks, bits left out, a radius per block, capacities so small
    that most hashes overflow to the ragged path, or large enough that none do), multi-index
    hashing finds exactly the pairs that comparing every pair finds."""
    from tasks.dedup import _all_pairs, _mih_pairs, _mih_plan, _MihPlan

    hashes = _planted(n, seed=n + radius)
    expected = _all_pairs(hashes, radius, 256, 1)
    expected = expected[np.lexsort((expected[:, 1], expected[:, 0]))]
    assert len(expected) >= 12  # the repeats and zeros at least
    plans = [p for p in [_mih_plan(len(hashes), radius)] if p is not None]
    for m in range(1, min(radius + 1, 5) + 1):
        low, wide = divmod(radius - m + 1, m)  # the radii sum to radius - m + 1
        radii = (low + 1,) * wide + (low,) * (m - wide)
        for width in (4, min(64 // m, 12)):  # 4: most bits left out of every block
            masks = sum(math.comb(width, k) for r in radii for k in range(min(r, width) + 1))
            if masks > 150:
                continue  # correct too, but slow
            for capacity in (1, 3, 64):
                plans.append(_MihPlan((width,) * m, radii, (capacity,) * m))
    assert len(plans) >= 6
    for plan in plans:
        assert np.array_equal(_mih_pairs(hashes, radius, plan, workers=2), expected), plan
    assert np.array_equal(hamming_pairs(hashes, radius), expected)


def test_feedback_images_train_and_leave_the_split_alone_unless_feedback_to_valid(
    tmp_path: Path,
) -> None:
    """The gate compares champion and candidate on the validation split: images added from
    accepted feedback train, and the other images' split is what it was without them;
    ``feedback_to_valid`` splits them like any other image."""
    d = tmp_path / "without"
    before = {r.sha256: r.split for r in manifest(build_dataset(split_rows(d), d, seed=0))}
    for to_valid in (False, True):
        d = tmp_path / f"to_valid_{to_valid}"
        fed = [verified(d, noise(500 + k), "cat", f"{URL_SCHEME}{k}") for k in range(10)]
        out = manifest(build_dataset(split_rows(d) + fed, d, seed=0, feedback_to_valid=to_valid))
        added = [r for r in out if r.source == FEEDBACK]
        assert len(added) == 10 and all(r.status == "kept" for r in added)
        if to_valid:
            assert {r.split for r in added} == {"train", "valid"}
        else:
            assert {r.split for r in added} == {"train"}
            assert {r.sha256: r.split for r in out if r.source != FEEDBACK} == before
