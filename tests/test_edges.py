"""Datasets at the edges: property-based tests (Hypothesis) of the pure parts where edge cases
hide — the train/valid split, training batches, dedup grouping, URL-list parsing — and the
checks that refuse, or warn about, data that cannot make a trustworthy classifier."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.data_checks import (
    ClassCount,
    DatasetUnusable,
    checked_dataset,
    unreliable_reasons,
    unusable_reasons,
)
from tasks.dedup import _mark, _UnionFind
from tasks.lr_find import lr_find
from tasks.manifest import ImageRow, write_dataset
from tasks.splits import assign_split, fold_of
from tasks.train import (
    MIN_TRAINING_BATCH,
    Tensors,
    TrainConfig,
    Trial,
    batch_bounds,
    fit,
    index_batches,
)
from tasks.url_lists import read_url_lists

# Pure functions, each example in microseconds: many examples, no deadline (a shared machine).
PROPERTIES = settings(max_examples=200, deadline=None)


def _row(sha: str, label: str, group: str, width: int = 8) -> ImageRow:
    return ImageRow(
        sha256=sha,
        image_path=f"images/{sha}.png",
        label=label,
        url="",
        width=width,
        height=width,
        pixel_hash=sha,
        phash="0" * 16,
        group=group,
    )


# A dataset's kept rows: per label 1-8 duplicate groups of 1-3 images each.
labelled_groups = st.dictionaries(
    st.sampled_from("abcde"),
    st.lists(st.integers(1, 3), min_size=1, max_size=8),
    min_size=1,
)


def _rows(groups: dict[str, list[int]]) -> list[ImageRow]:
    return [
        _row(f"{label}{g}-{i}", label, f"{label}{g}")
        for label, sizes in groups.items()
        for g, size in enumerate(sizes)
        for i in range(size)
    ]


@PROPERTIES
@given(labelled_groups, st.sampled_from([0.1, 0.2, 0.25, 0.5]), st.integers(0, 3), st.randoms())
def test_split_keeps_groups_whole_every_class_on_both_sides_and_is_seeded(
    groups, valid_pct, seed, shuffler
) -> None:
    rows = _rows(groups)
    assign_split(rows, valid_pct, seed)
    split_of_group: dict[str, set[str]] = {}
    for r in rows:
        split_of_group.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in split_of_group.values()), "a group straddles the split"
    for label, sizes in groups.items():
        sides = {r.split for r in rows if r.label == label}
        assert sides == ({"train", "valid"} if len(sizes) >= 2 else {"train"}), (label, sizes)
    again = _rows(groups)
    shuffler.shuffle(again)  # the same rows in another order: the same split
    assign_split(again, valid_pct, seed)
    assert {r.sha256: r.split for r in again} == {r.sha256: r.split for r in rows}


@PROPERTIES
@given(labelled_groups, st.integers(2, 5), st.integers(0, 3))
def test_folds_keep_groups_whole_and_are_seeded(groups, folds, seed) -> None:
    rows = _rows(groups)
    assigned = fold_of(rows, folds, seed)
    fold_of_group: dict[str, set[int]] = {}
    for r, k in zip(rows, assigned.tolist(), strict=True):
        fold_of_group.setdefault(r.group, set()).add(k)
    assert all(len(s) == 1 for s in fold_of_group.values())
    assert assigned.tolist() == fold_of(rows, folds, seed).tolist()


@PROPERTIES
@given(st.integers(0, 400), st.integers(2, 80), st.sampled_from([1, MIN_TRAINING_BATCH]))
def test_batches_cover_every_index_once_and_training_never_sees_a_batch_of_one(
    n, batch_size, min_size
) -> None:
    batches = list(
        index_batches(n, batch_size, torch.Generator().manual_seed(n), min_size=min_size)
    )
    sizes = [len(b) for b in batches]
    if n >= min_size:
        assert sorted(torch.cat(batches).tolist() if batches else []) == list(range(n))
    assert all(min_size <= s <= batch_size + min_size - 1 for s in sizes), sizes
    assert len(batch_bounds(n, batch_size, min_size)) == len(batches)


def test_training_runs_at_0_1_and_2_past_a_multiple_of_the_batch_size() -> None:
    """Batch norm cannot train on one image: a last batch of one once crashed fit, lr_find
    and the cleaning folds (which train with fit) on one dataset size in 64."""
    config = TrainConfig(image_size=16, batch_size=8, augment=False)
    for extra, steps in ((0, 2), (1, 2), (2, 3)):  # 16 + 1 images: 8 and 9, never 8, 8, 1
        n = 16 + extra
        gen = torch.Generator().manual_seed(extra)
        x = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=gen)
        y = torch.arange(n) % 2
        data = Tensors(["a", "b"], x, y, x[:4], y[:4])
        assert len(fit(Trial(1e-3, 1), config, data).step_losses) == steps
        if extra == 1:
            assert len(lr_find(config, data, num_iter=5).lrs) >= 1


@PROPERTIES
@given(st.integers(1, 30), st.lists(st.tuples(st.integers(0, 29), st.integers(0, 29))))
def test_union_find_groups_are_the_connected_components(n, edges) -> None:
    groups = _UnionFind(n)
    component = list(range(n))  # the naive way: relabel until nothing changes
    for i, j in edges:
        i, j = i % n, j % n
        groups.union(i, j)
        old, new = component[j], component[i]
        component = [new if c == old else c for c in component]
    for i in range(n):
        for j in range(n):
            assert (groups.find(i) == groups.find(j)) == (component[i] == component[j])


@PROPERTIES
@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(1, 64)), min_size=1, max_size=6))
def test_a_duplicate_group_keeps_one_image_or_none_when_its_labels_conflict(members) -> None:
    group = [_row(f"s{i}", label, "", width) for i, (label, width) in enumerate(members)]
    _mark(group)
    best = min(group, key=lambda r: (-r.width * r.height, r.sha256))  # the largest picture
    assert {r.group for r in group} == {best.sha256}
    if len({label for label, _ in members}) > 1:
        assert {r.status for r in group} == {"label_conflict"}
    else:
        assert [r for r in group if r.status == "kept"] == [best]
        assert all(r.duplicate_of == best.sha256 for r in group if r is not best)


url_lines = st.lists(st.integers(0, 10_000).map(lambda i: f"https://host.test/{i}.jpg?q={i}"))
padding = st.text(alphabet=" \t\u00a0\u3000\u200b\ufeff", max_size=3)


@PROPERTIES
@given(
    url_lines,
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.booleans(),
    st.lists(st.tuples(padding, padding, st.booleans(), st.booleans())),
)
def test_url_lists_read_every_url_whatever_the_editor_wrote(urls, newline, bom, noise) -> None:
    lines = []
    for k, url in enumerate(urls):
        before, after, blank, comment = noise[k] if k < len(noise) else ("", "", False, False)
        if blank:
            lines.append(before)
        if comment:
            lines.append(f"{before}# {url} is not this one")
        lines.append(f"{before}{url}{after}")
    text = ("\ufeff" if bom else "") + newline.join(lines) + newline
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cats.txt"
        path.write_bytes(text.encode("utf-8"))
        rows = read_url_lists(path)
    assert [r.url for r in rows] == urls
    assert {r.label for r in rows} <= {"cats"}


def test_a_url_list_saved_with_a_byte_order_mark_keeps_its_first_url(tmp_path: Path) -> None:
    path = tmp_path / "bears.txt"
    path.write_bytes(b"\xef\xbb\xbfhttps://a.test/1.jpg\r\nhttps://a.test/2.jpg\r\n")
    assert [r.url for r in read_url_lists(path)] == ["https://a.test/1.jpg", "https://a.test/2.jpg"]


def _counts(**per_class: tuple[int, int]) -> list[ClassCount]:
    return [ClassCount(label, train, valid, 0) for label, (train, valid) in per_class.items()]


def test_what_cannot_make_a_classifier_is_refused_with_classes_and_counts(tmp_path: Path) -> None:
    assert unusable_reasons(_counts(a=(12, 3), b=(12, 3))) == []
    (one,) = unusable_reasons(_counts(a=(16, 4)))
    assert "at least 2 classes" in one and "found 1 (a)" in one
    no_train = unusable_reasons(_counts(a=(12, 3), b=(0, 2)))
    assert any("no training image in class b (2 valid" in r for r in no_train)
    assert any(
        "validation split is empty" in r for r in unusable_reasons(_counts(a=(5, 0), b=(5, 0)))
    )
    assert unusable_reasons(_counts(a=(5, 0), b=(5, 0)), need_valid=False) == []

    rows = [_row(f"a{i}", "a", f"a{i}") for i in range(20)]
    assign_split(rows, 0.2, 0)
    dataset = write_dataset(tmp_path, rows)
    with pytest.raises(DatasetUnusable, match=r"a: 16 train / 4 valid"):
        checked_dataset(dataset)


def test_numbers_that_mean_little_are_warned_about() -> None:
    assert unreliable_reasons(_counts(a=(40, 10), b=(40, 10))) == []
    (few,) = unreliable_reasons(_counts(a=(40, 10), b=(8, 3)))
    assert "fewer than 10 validation images in class b (3)" in few
    imbalanced = unreliable_reasons(_counts(a=(400, 100), b=(40, 10)))
    assert any("a has 400 training images, b 40" in r for r in imbalanced)


def test_two_images_of_a_class_give_it_one_on_each_side() -> None:
    rows = [_row(f"{c}{i}", c, f"{c}{i}") for c in "ab" for i in range(2)]
    random.Random(0).shuffle(rows)
    assign_split(rows, 0.2, 0)
    assert sorted((r.label, r.split) for r in rows) == [
        ("a", "train"),
        ("a", "valid"),
        ("b", "train"),
        ("b", "valid"),
    ]
