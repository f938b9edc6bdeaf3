"""Training throughput on a CUDA GPU (skips cleanly without one).

    .venv/bin/python benchmarks/bench_gpu.py [--images 4096] [--batch-size 256] [--epochs 3]

For resnet18 and resnet34 at 224 px, images per second of training, three ways, from one run:

1. **model-only**: forward + backward + fused AdamW step on a normalised bf16-autocast batch
   already on the GPU, channels_last — the ceiling for this model on this card;
2. **Ursa's trainer**: :func:`tasks.train.fit` on the decoded-once uint8 tensor cache (GPU
   resident, augmentation on the GPU, bf16 autocast, channels_last); throughput of the epochs
   after the first (warm-up, compilation), and the first epoch's extra seconds;
3. **naive**: torchvision ``ImageFolder`` + PIL transforms (random affine, contrast,
   ``ToTensor``, ``Normalize``) through a ``DataLoader`` with 8 workers and pinned memory,
   decoding every JPEG every epoch, same model step.

Model-only and the trainer are measured eager and with ``torch.compile`` (unless
``--no-compile``), each compared with the model-only figure of the same mode; the summary
also says after how many training images compiling pays for its compile time.

The images are synthetic 256 px JPEGs (embedded digits upscaled onto textured backgrounds,
10 classes) so that the benchmark needs no network. Goals: the trainer at least 90% of
model-only, and at least 3x the naive pipeline.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from tasks.manifest import ImageRow, write_dataset  # noqa: E402
from tasks.tensor_cache import load_tensors, tensor_cache  # noqa: E402
from tasks.train import (  # noqa: E402
    TrainConfig,
    Trial,
    fit,
)

SIZE = 224
NAIVE_WORKERS = 8


def write_images(root: Path, n: int, seed: int = 0) -> list[ImageRow]:
    """``n`` synthetic 256 px JPEGs in 10 classes; returns dataset rows (1 in 8 valid)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = i % len(digits.target)
        digit = Image.fromarray((digits.images[k] * 15).astype(np.uint8)).resize((256, 256))
        background = rng.integers(0, 90, (256, 256, 3), dtype=np.uint8)
        image = np.clip(background + np.asarray(digit)[..., None], 0, 255).astype(np.uint8)
        label = str(digits.target[k])
        name = f"{i:06d}"
        path = root / "images" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=90)
        rows.append(
            ImageRow(
                sha256=name,
                image_path=f"images/{name}.jpg",
                label=label,
                url=f"synthetic:{i}",
                width=256,
                height=256,
                pixel_hash=name,
                phash="0" * 16,
                group=name,
                split="valid" if i % 8 == 0 else "train",
            )
        )
    return rows


def _step_fn(model: nn.Module, lr: float = 1e-3):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    criterion = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def model_only(arch: str, batch_size: int, steps: int, compile: bool) -> float:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10).cuda()
    model = model.to(memory_format=torch.channels_last).train()
    model = torch.compile(model) if compile else model
    x = torch.randn(batch_size, 3, SIZE, SIZE, device="cuda")
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device="cuda")
    step = _step_fn(model)
    for _ in range(5):
        step(x, y)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def trainer(
    cache: Path, arch: str, batch_size: int, epochs: int, compile: bool
) -> tuple[float, float]:
    """(images/s of the training pass after the first epoch, the first epoch's extra seconds:
    cudnn's autotuning and, compiled, the compilation)."""
    data = load_tensors(cache)
    config = TrainConfig(arch=arch, image_size=SIZE, batch_size=batch_size, compile=compile)
    torch.cuda.synchronize()
    fitted = fit(Trial(lr=1e-3, epochs=epochs), config, data)
    # The training pass only (the validation pass is timed apart), after the first epoch.
    seconds = min(h["train_seconds"] for h in fitted.history[1:])
    first = fitted.history[0]["epoch_seconds"] - min(h["epoch_seconds"] for h in fitted.history[1:])
    return len(data.y_train) / seconds, first


def naive(root: Path, arch: str, batch_size: int, epochs: int) -> float:
    import torchvision
    from torch.utils.data import DataLoader
    from torchvision import datasets

    from benchmarks._naive import naive_train_transform

    train_set = datasets.ImageFolder(root / "train", naive_train_transform(SIZE))
    loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        num_workers=NAIVE_WORKERS,
        pin_memory=True,
        drop_last=True,
    )
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10).cuda()
    model = model.to(memory_format=torch.channels_last).train()
    step = _step_fn(model)
    rates = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        seen = 0
        for x, y in loader:
            x = x.cuda(non_blocking=True).contiguous(memory_format=torch.channels_last)
            step(x, y.cuda(non_blocking=True))
            seen += len(y)
        torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - start))
    return max(rates[1:]) if len(rates) > 1 else rates[0]


def image_folder(root: Path, rows: list[ImageRow]) -> Path:
    folder = root / "folder"
    for r in rows:
        if r.split == "train":
            target = folder / "train" / r.label / Path(r.image_path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(root / r.image_path)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3, help="trainer/naive epochs (>= 2)")
    parser.add_argument("--steps", type=int, default=50, help="model-only timed steps")
    parser.add_argument("--archs", default="resnet18,resnet34")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled trainer")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: skipped: no CUDA device (torch.cuda.is_available() is False)")
        return 0
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="ursa-bench-gpu-"))
    lines = []
    try:
        start = time.perf_counter()
        rows = write_images(root, args.images)
        dataset = write_dataset(root, rows)
        cache = tensor_cache(dataset, SIZE)
        folder = image_folder(root, rows)
        print(f"{args.images} images written and cached in {time.perf_counter() - start:.0f} s")
        for arch in args.archs.split(","):
            ceiling = model_only(arch, args.batch_size, args.steps, compile=False)
            ours, warmup = trainer(cache, arch, args.batch_size, args.epochs, compile=False)
            baseline = naive(folder, arch, args.batch_size, args.epochs)
            print(
                f"{arch}: eager: model-only {ceiling:,.0f} img/s, trainer {ours:,.0f} img/s "
                f"(first epoch +{warmup:.1f} s); naive {baseline:,.0f} img/s",
                flush=True,
            )
            lines += [
                f"{arch} trainer vs model-only, eager: {ours / ceiling:.0%} (goal >= 90%)",
                f"{arch} trainer vs naive DataLoader({NAIVE_WORKERS} workers), eager: "
                f"{ours / baseline:.1f}x (goal >= 3x)",
            ]
            if args.no_compile:
                continue
            ceiling_c = model_only(arch, args.batch_size, args.steps, compile=True)
            ours_c, warmup_c = trainer(cache, arch, args.batch_size, args.epochs, compile=True)
            print(
                f"{arch}: compiled: model-only {ceiling_c:,.0f} img/s, trainer {ours_c:,.0f} "
                f"img/s (first epoch +{warmup_c:.1f} s)",
                flush=True,
            )
            # Compiling pays once the images trained exceed what the compile time would have
            # trained at the eager rate, over the fraction of time compiling saves.
            saved = 1 - ours / ours_c
            compiling = max(warmup_c - warmup, 0.0)
            break_even = compiling * ours / saved if saved > 0 else math.inf
            lines += [
                f"{arch} trainer vs model-only, compiled: {ours_c / ceiling_c:.0%} (goal >= 90%)",
                f"{arch} torch.compile speed-up in the trainer: {ours_c / ours:.2f}x, "
                f"pays after {break_even:,.0f} training images (goal: on only where > 1x)",
            ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
