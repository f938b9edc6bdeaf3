"""The memory-mapped training cache, against the cache it replaced (decode all, then stack)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tasks.tensor_cache as tensor_cache_module
from tasks.manifest import Dataset, ImageRow, read_rows, write_dataset
from tasks.tensor_cache import Selection, load_tensors, tensor_cache
from tests.datasets import digits_dataset


def _stacked_cache(dataset: Dataset, size: int) -> dict[str, torch.Tensor]:
    """The old ``tasks.train.tensor_cache``: every image in a list, then one np.stack."""
    rows = [r for r in read_rows(Path(dataset.manifest_path), ImageRow) if r.status == "kept"]
    index = {c: i for i, c in enumerate(dataset.classes)}
    out = {}
    for split in ("train", "valid"):
        chosen = [r for r in rows if r.split == split]
        images = [
            np.asarray(
                Image.open(dataset.data_dir / r.image_path)
                .convert("RGB")
                .resize((size, size), Image.BILINEAR)
            )
            for r in chosen
        ]
        out[f"x_{split}"] = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        out[f"y_{split}"] = torch.tensor([index[r.label] for r in chosen], dtype=torch.long)
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_the_streamed_cache_holds_the_tensors_of_the_stacked_one(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    dataset = digits_dataset(data_dir, per_class=9, classes=3)
    # Small chunks: several per split, so rows land at offsets other than 0, from two processes.
    monkeypatch.setattr(tensor_cache_module, "CHUNK_IMAGES", 4)
    path = tensor_cache(dataset, 24, workers=workers)
    data = load_tensors(path)
    expected = _stacked_cache(dataset, 24)
    assert data.classes == list(dataset.classes)
    for name, tensor in expected.items():
        torch.testing.assert_close(getattr(data, name), tensor, rtol=0, atol=0)
    # Mapped, not loaded: the pixels stay in the file (NumPy's format, readable without Ursa).
    assert isinstance(np.load(path / "x_train.npy", mmap_mode="r"), np.memmap)
    assert data.x_train.untyped_storage().nbytes() == data.x_train.numel()
    assert not list(path.parent.glob("*.tmp"))


def test_an_empty_split_gives_empty_tensors(data_dir: Path) -> None:
    dataset = digits_dataset(data_dir, per_class=3, classes=2)
    rows = read_rows(Path(dataset.manifest_path), ImageRow)
    for r in rows:
        r.split = "train"
    data = load_tensors(tensor_cache(write_dataset(data_dir, rows), 16))
    assert data.x_valid.shape == (0, 3, 16, 16) and data.y_valid.shape == (0,)
    assert data.x_train.shape == (6, 3, 16, 16)


def test_a_selection_reads_the_maps_as_their_concatenation_would(data_dir: Path) -> None:
    """Cleaning's folds pick images out of train + valid without copying either: what they
    read is what indexing the two concatenated would give."""
    data = load_tensors(tensor_cache(digits_dataset(data_dir, per_class=5, classes=2), 16))
    maps = (data.x_train, data.x_valid)
    whole = torch.cat(maps)
    index = torch.tensor([len(data.x_train), 0, 3, len(whole) - 1, 1])  # both maps, any order
    picked = Selection(maps, index)
    assert len(picked) == 5 and picked.shape == (5, 3, 16, 16) and picked.nbytes == 5 * 768
    positions = torch.tensor([4, 0, 2])
    assert torch.equal(picked[positions], whole[index[positions]])
    every_other = picked[::2]  # a slice is another selection, as a tensor's is a view
    assert isinstance(every_other, Selection)
    assert torch.equal(every_other[torch.arange(3)], whole[index[::2]])
    assert torch.equal(picked.to(torch.device("cpu")), whole[index])
    assert [torch.equal(a, b) for a, b in zip(picked, whole[index], strict=True)] == [True] * 5
