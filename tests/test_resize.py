"""One picture-to-input step for training, cleaning and serving, resize policy included: a raw
photo of an unusual aspect ratio (not pre-resized) reaches the model alike on both paths, and
so does the centre of the photos recipe's larger cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tasks.manifest import ImageRow, read_rows
from tasks.recipes import RECIPES
from tasks.tensor_cache import load_tensors, tensor_cache
from tasks.train import MEAN, STD, TrainConfig, model_inputs
from tests.datasets import photos_dataset
from ursa.images import RESIZE_POLICIES, input_pixels, open_image
from ursa.package import ModelPackage, preprocess


def test_policies_keep_or_fill_the_aspect_ratio() -> None:
    wide = np.zeros((50, 150, 3), np.uint8)
    wide[:, 50:100] = 255  # a white middle third
    image = Image.fromarray(wide)
    crop, pad, squash = (input_pixels(image, 30, p) for p in ("crop", "pad", "squash"))
    assert crop.shape == pad.shape == squash.shape == (30, 30, 3) and crop.dtype == np.uint8
    assert crop[:, 3:27].min() == 255  # the centre square is all white
    assert pad[:5].max() == 0 and pad[-5:].max() == 0  # black bands above and below
    assert pad[12:18, 12:18].min() == 255 and pad[12:18, :3].max() == 0
    assert squash[:, :8].max() == 0 and squash[:, 12:18].min() == 255  # stretched
    with pytest.raises(ValueError, match="stretch"):
        input_pixels(image, 30, "stretch")


@pytest.mark.parametrize("policy", RESIZE_POLICIES)
def test_served_input_equals_training_input_for_raw_photos(data_dir, policy: str) -> None:
    dataset = photos_dataset(data_dir, per_class=3, classes=2)
    data = load_tensors(tensor_cache(dataset, 32, policy))
    rows = [
        r for r in read_rows(Path(dataset.manifest_path), ImageRow) if r.split == "valid"
    ]  # the cache holds them in manifest order
    assert {(r.width, r.height) for r in rows} == {(150, 50)}  # 3:1, as stored
    # Serving decodes the uploaded bytes (ingest's decoder), then preprocesses.
    uploads = [open_image((data_dir / r.image_path).read_bytes()) for r in rows]
    served = preprocess(uploads, 32, MEAN, STD, policy)
    trained = model_inputs(data.x_valid, torch.device("cpu"))  # no augmentation: validation
    torch.testing.assert_close(served, trained, atol=1e-5, rtol=0)
    other = "squash" if policy != "squash" else "crop"
    assert not torch.allclose(preprocess(uploads, 32, MEAN, STD, other), trained, atol=1e-2)


def test_the_photos_recipe_serves_the_centre_it_validates_on(data_dir) -> None:
    """Photos are cached at 8/7 of the training size and cut to it: training's validation
    input (the centre of the cache) is what the server makes of the same raw photo."""
    config = TrainConfig(image_size=28, resize="crop", resize_ratio=RECIPES["photos"].resize_ratio)
    assert config.resize_size == 32  # 8/7, as 256 for 224
    dataset = photos_dataset(data_dir, per_class=3, classes=2)
    data = load_tensors(tensor_cache(dataset, config.resize_size, config.resize))
    assert data.x_valid.shape[1:] == (3, 32, 32)
    rows = [r for r in read_rows(Path(dataset.manifest_path), ImageRow) if r.split == "valid"]
    uploads = [open_image((data_dir / r.image_path).read_bytes()) for r in rows]
    trained = model_inputs(data.x_valid, torch.device("cpu"), size=config.image_size)
    served = preprocess(uploads, 28, MEAN, STD, "crop", config.resize_size)
    assert trained.shape == served.shape == (len(rows), 3, 28, 28)
    torch.testing.assert_close(served, trained, atol=1e-5, rtol=0)
    # The centre of the larger picture, not the picture resized to 28: a different input.
    assert not torch.allclose(preprocess(uploads, 28, MEAN, STD, "crop"), trained, atol=1e-2)
    meta = {"classes": ["a", "b"], "image_size": 28, "mean": MEAN, "std": STD, "resize": "crop"}
    package = ModelPackage(module=_Recorder(), meta={**meta, "resize_size": 32}, uri="test")
    package.probabilities(uploads)
    torch.testing.assert_close(package.module.seen, trained, atol=1e-5, rtol=0)


class _Recorder(nn.Module):
    """A stand-in model that keeps the batch it was given."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.clone()
        return torch.zeros(len(x), 2)


def test_a_package_serves_with_the_policy_it_was_trained_with(data_dir) -> None:
    dataset = photos_dataset(data_dir, per_class=3, classes=2)
    data = load_tensors(tensor_cache(dataset, 32, "crop"))
    rows = [r for r in read_rows(Path(dataset.manifest_path), ImageRow) if r.split == "valid"]
    meta = {"classes": ["a", "b"], "image_size": 32, "mean": MEAN, "std": STD, "resize": "crop"}
    package = ModelPackage(module=_Recorder(), meta=meta, uri="test")
    package.probabilities([open_image((data_dir / r.image_path).read_bytes()) for r in rows])
    expected = model_inputs(data.x_valid, torch.device("cpu"))
    torch.testing.assert_close(package.module.seen, expected, atol=1e-5, rtol=0)
