"""Training: the whole loop visible top to bottom, in the style of torchvision's reference
``train.py`` — ``load_tensors``, ``build_model``, ``train_one_epoch``, ``evaluate``,
``run_trial``. The sweep (:mod:`tasks.sweep`) is a thin layer above it.

Each image is decoded once per dataset into a uint8 tensor cache at training resolution
(:func:`tensor_cache`); every trial reads that file instead of decoding PNGs each epoch.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn

from tasks.manifest import Dataset, ImageRow, read_rows
from ursa.package import normalise

# ImageNet statistics: right for pretrained backbones, harmless for models trained from scratch.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
ARCHITECTURES = ("resnet18", "resnet34")


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but are not on this machine."""


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "resnet18"
    image_size: int = 32
    batch_size: int = 64
    seed: int = 0
    pretrained: bool = False
    weights_path: str = ""  # a local state_dict file for the pretrained backbone

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"TrainConfig.arch is '{self.arch}', expected one of {ARCHITECTURES}.")
        if self.image_size < 16:
            raise ValueError(f"TrainConfig.image_size is {self.image_size}, expected >= 16.")


@dataclass(frozen=True)
class Trial:
    lr: float
    epochs: int

    @property
    def name(self) -> str:
        return f"lr={self.lr:g} epochs={self.epochs}"


@dataclass
class TrialResult:
    lr: float
    epochs: int
    run_id: str
    val_accuracy: float
    val_loss: float
    train_loss: float
    checkpoint: str  # state_dict file of the final weights
    seconds: float
    history: list[dict] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return math.isfinite(self.val_loss) and math.isfinite(self.train_loss)


@dataclass
class Tensors:
    classes: list[str]
    x_train: torch.Tensor  # uint8 (N, 3, S, S)
    y_train: torch.Tensor
    x_valid: torch.Tensor
    y_valid: torch.Tensor


def device_for_training() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tensor_cache(dataset: Dataset, image_size: int) -> Path:
    """Decode the kept images once into ``<data>/cache/<digest>-<size>.pt``; return its path."""
    path = dataset.data_dir / "cache" / f"{dataset.digest[:16]}-{image_size}.pt"
    if path.exists():
        return path
    rows = [r for r in read_rows(Path(dataset.manifest_path), ImageRow) if r.status == "kept"]
    index = {c: i for i, c in enumerate(dataset.classes)}
    payload: dict = {"classes": list(dataset.classes)}
    for split in ("train", "valid"):
        chosen = [r for r in rows if r.split == split]
        images = [
            np.asarray(
                Image.open(dataset.data_dir / r.image_path)
                .convert("RGB")
                .resize((image_size, image_size), Image.BILINEAR)
            )
            for r in chosen
        ]
        x = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
        payload[f"x_{split}"] = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        payload[f"y_{split}"] = torch.tensor([index[r.label] for r in chosen], dtype=torch.long)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_tensors(path: str | Path) -> Tensors:
    return Tensors(**torch.load(path, weights_only=True))


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """A torchvision model with a fresh head; pretrained backbone only from a local file."""
    constructor = getattr(torchvision.models, config.arch)
    model = constructor(weights=None)
    if config.pretrained:
        model.load_state_dict(_pretrained_state_dict(config))
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _pretrained_state_dict(config: TrainConfig) -> dict:
    weights = torchvision.models.get_model_weights(config.arch).DEFAULT
    candidates = [Path(config.weights_path)] if config.weights_path else []
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name)
    for path in candidates:
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
    raise WeightsUnavailable(
        f"Pretrained weights for '{config.arch}' were not found at "
        f"{', '.join(str(p) for p in candidates)}. This machine cannot download them: put the "
        f"file there, pass a local file as weights_path, or train with pretrained=False."
    )


def _batches(n: int, batch_size: int, generator: torch.Generator | None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def _inputs(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    batch = x.to(device, non_blocking=True).float().div_(255.0)
    return normalise(batch, MEAN, STD).contiguous(memory_format=torch.channels_last)


def _autocast(device: torch.device):
    # bf16 autocast on CUDA; on these CPUs (no bf16 units) plain float32 is faster.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: Tensors,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[float, float]:
    """One pass over the training set; returns (mean loss, accuracy)."""
    model.train()
    criterion = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    for idx in _batches(len(data.y_train), batch_size, generator):
        x, y = _inputs(data.x_train[idx], device), data.y_train[idx].to(device)
        with _autocast(device):
            logits = model(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return total_loss / max(seen, 1), correct / max(seen, 1)


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int = 256
) -> tuple[float, float, torch.Tensor]:
    """Returns (mean loss, accuracy, predicted class per example)."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total_loss, preds = 0.0, []
    for idx in _batches(len(y), batch_size, None):
        with _autocast(device):
            logits = model(_inputs(x[idx], device)).float()
        total_loss += criterion(logits, y[idx].to(device)).item()
        preds.append(logits.argmax(1).cpu())
    predicted = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    accuracy = (predicted == y).float().mean().item() if len(y) else float("nan")
    return total_loss / max(len(y), 1), accuracy, predicted


def fit(
    trial: Trial, config: TrainConfig, data: Tensors, on_epoch=None
) -> tuple[nn.Module, list[dict]]:
    """Train one model with a one-cycle schedule; ``on_epoch(record)`` after every epoch."""
    torch.manual_seed(config.seed)
    device = device_for_training()
    model = build_model(config, len(data.classes)).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=trial.lr, weight_decay=1e-2)
    steps = math.ceil(len(data.y_train) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=trial.lr, total_steps=max(steps * trial.epochs, 1)
    )
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    for epoch in range(trial.epochs):
        start = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model, optimizer, scheduler, data, config.batch_size, generator, device
        )
        val_loss, val_acc, _ = evaluate(model, data.x_valid, data.y_valid, device)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "epoch_seconds": time.perf_counter() - start,
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if not math.isfinite(train_loss):
            break  # diverged: further epochs only burn time
    return model, history


def run_trial(
    trial: Trial,
    config: TrainConfig,
    cache_path: str,
    experiment_id: str,
    parent_run_id: str,
    dataset_digest: str,
) -> TrialResult:
    """Train one trial as an MLflow child run of the sweep; save its weights for later logging."""
    import mlflow

    from tasks.plots import loss_curves_figure

    data = load_tensors(cache_path)
    start = time.perf_counter()
    # Linked to the parent explicitly: the active run is thread-local and trials may run in threads.
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=trial.name, parent_run_id=parent_run_id
    ) as run:
        mlflow.log_params({**asdict(config), **asdict(trial), "dataset_digest": dataset_digest})
        mlflow.set_tag("ursa.role", "trial")

        def log_epoch(record: dict) -> None:
            metrics = {k: v for k, v in record.items() if k != "epoch" and math.isfinite(v)}
            mlflow.log_metrics(metrics, step=record["epoch"])

        model, history = fit(trial, config, data, on_epoch=log_epoch)
        mlflow.log_figure(loss_curves_figure(history, trial.name), "loss_curves.png")
        checkpoint = Path(cache_path).parent.parent / "checkpoints" / f"{run.info.run_id}.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), checkpoint)
        last = history[-1]
        return TrialResult(
            lr=trial.lr,
            epochs=trial.epochs,
            run_id=run.info.run_id,
            val_accuracy=last["val_accuracy"],
            val_loss=last["val_loss"],
            train_loss=last["train_loss"],
            checkpoint=str(checkpoint),
            seconds=time.perf_counter() - start,
            history=history,
        )
