"""One picture-to-input step for training, cleaning and serving, resize policy included: a raw
photo of an unusual aspect ratio (not pre-resized) reaches the model alike on both paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tasks.manifest import ImageRow, read_rows
from tasks.tensor_cache import load_tensors, tensor_cache
from tasks.train import MEAN, STD, model_inputs
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
