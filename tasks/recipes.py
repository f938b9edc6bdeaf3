"""Training recipes: named sets of training choices that fit one kind of data.

- ``digits`` (the default): small scans trained from scratch — resnet18 at 32 px, squashed
  to the square (scans are square already), mild augmentation without mirrors, a 2 x 2 grid
  of learning rates x epochs. What the embedded default and ``make demo`` run.
- ``photos``: fast.ai lesson 2's recipe for web photos — resnet34 pretrained on ImageNet at
  224 px, fine-tuned (one epoch of the head alone, then everything with discriminative
  rates: lesson 2's ``fine_tune(4)`` is these 1 + 4 epochs), the learning rate from the range
  test (``lr_find``), random resized crops, mirrors, small rotations and lighting changes,
  and pictures cropped to the square, never squashed. Its cache is stored at 8/7 of the
  training size (256 px for 224): training crops it at random per batch, so crops see real
  pixels, not upscaled ones; validation and serving take its centre 224 (torchvision's
  ``Resize(256)`` + ``CenterCrop(224)``). BENCHMARKS.md ("Scale", photos) has the choice.

Every value is a default: what the user gives (a CLI flag, a flow parameter) wins, and what
they did not give is taken from the recipe (:func:`recipe_values`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

# Batch augmentation styles (tasks.train.augment): digits and text may not be mirrored or
# cropped much; photos want random resized crops, mirrors and lighting changes.
Augmentation = Literal["digits", "photos"]
AUGMENTATIONS: tuple[str, ...] = get_args(Augmentation)


@dataclass(frozen=True)
class Recipe:
    arch: str = "resnet18"
    image_size: int = 32
    batch_size: int = 64
    pretrained: bool = False
    freeze_epochs: int = 1
    augment: bool = True
    augmentation: str = "digits"
    flip: bool = False
    resize: str = "squash"
    # Pictures are stored (and served: resized) at image_size x resize_ratio, then cut to
    # image_size: at random for training, at the centre for validation and serving. 1: no
    # cut (the digits: the cache at the training size, bit for bit as before).
    resize_ratio: float = 1.0
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3])
    epochs: list[int] = field(default_factory=lambda: [2, 4])
    lr_find: bool = False
    centre_lrs: bool = False


RECIPES: dict[str, Recipe] = {
    "digits": Recipe(),
    "photos": Recipe(
        arch="resnet34",
        image_size=224,
        pretrained=True,
        augmentation="photos",
        flip=True,
        resize="crop",
        resize_ratio=8 / 7,  # 256 px for 224: what BENCHMARKS.md measured and chose
        lrs=[1e-3],  # one rate, replaced by lr_find's suggestion (centre_lrs)
        epochs=[5],
        lr_find=True,
        centre_lrs=True,
    ),
}
DEFAULT_RECIPE = "digits"
RecipeName = Literal["digits", "photos"]  # the keys of RECIPES, for typed flow parameters


def recipe_values(name: str, given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(every recipe field's value, the fields the user's ``given`` values changed): the
    recipe ``name`` with each value in ``given`` that is not None put over it."""
    if name not in RECIPES:
        raise ValueError(f"Recipe is '{name}', expected one of {tuple(RECIPES)}.")
    values = asdict(RECIPES[name])
    unknown = set(given) - set(values)
    if unknown:
        raise ValueError(f"Recipes have no fields {sorted(unknown)}.")
    overridden = [k for k, v in given.items() if v is not None and v != values[k]]
    values.update({k: v for k, v in given.items() if v is not None})
    return values, overridden
