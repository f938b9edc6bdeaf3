"""The naive reference's training transform, shared by bench_train.py and bench_gpu.py: the
PIL equivalent of Ursa's batched tensor augmentation (``tasks.train.augment``), applied image
by image after decoding, the way a torchvision ``ImageFolder`` pipeline is usually written."""

from __future__ import annotations

from torchvision import transforms

from tasks.train import MEAN, STD


def naive_train_transform(size: int) -> transforms.Compose:
    """Resize, random affine (±10°, ±1/8 shift, scale 0.9-1.1), contrast jitter, normalise."""
    return transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.RandomAffine(10, translate=(1 / 8, 1 / 8), scale=(0.9, 1.1)),
            transforms.ColorJitter(contrast=0.2),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
