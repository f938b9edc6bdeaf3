"""Training: the whole loop visible top to bottom, in the style of torchvision's reference
``train.py`` — ``build_model``, ``augment``, ``train_one_epoch``, ``evaluate``, ``fit``.
One trial as an MLflow run is :mod:`tasks.trial`; the sweep (:mod:`tasks.sweep`) is a thin
layer above that.

Each image is decoded once per dataset into a memory-mapped uint8 cache
(:mod:`tasks.tensor_cache`) at ``TrainConfig.resize_size``: the training size for the digits,
8/7 of it for photos (256 px for 224); every trial reads it instead of decoding images each
epoch, and augmentation happens on whole batches of tensors (:func:`augment`), not image by
image. A larger cache is cut to the training size per batch (:func:`model_inputs`): a
random-resized crop for training, the centre for validation, as serving cuts it.

Fine-tuning follows lesson 2 (fast.ai's ``fine_tune``): with a pretrained backbone, the first
``freeze_epochs`` train only the new head (and the batch-norm layers), then everything trains
with discriminative rates — early layers slower than late ones — each phase on a one-cycle
schedule. From scratch there is nothing to protect: one phase, one rate.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from tasks.architectures import check_arch, head, is_norm, layer_groups, new_model
from tasks.diagnosis import Diagnosis, diagnose
from tasks.recipes import AUGMENTATIONS
from tasks.tensor_cache import Selection, Tensors
from tasks.weights import WeightsUnavailable, local_weights_file
from ursa.images import RESIZE_POLICIES, centre_span

# ImageNet statistics: right for pretrained backbones, harmless for models trained from scratch.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Training images re-scored without augmentation for the diagnosis: about as many as there
# are validation images, within these bounds, so that both losses are estimated about as well.
CLEAN_TRAIN_SAMPLE = (256, 1024)
IF_NO_WEIGHTS = ("fail", "scratch")
# Discriminative rates after unfreezing (fast.ai's fine_tune): the base rate is halved, and
# the stem + first blocks learn 100x slower than the head, the middle blocks 10x slower.
UNFROZEN_BASE = 0.5
LAYER_GROUP_DIVISORS = (100.0, 10.0, 1.0)
# Before the validation pass of a trial that has taken fewer steps than this, batch-norm
# statistics are recomputed on training batches: running averages (momentum 0.1) still
# remember their initial values after a few dozen steps (0.9**50 < 1%), and a from-scratch
# model evaluated with them predicts badly whatever its rate. A few batches estimate the
# statistics well, and cost about a third of as many training steps (a forward pass, no
# backward).
BN_RECOMPUTE_STEPS = 50
BN_RECOMPUTE_BATCHES = 8
# Batch norm cannot train on one image (its variance is undefined): a training epoch never
# ends on a mini-batch smaller than this; the remainder joins the batch before it.
MIN_TRAINING_BATCH = 2
# The photos' random-resized crop: this share of the stored picture's area (the cache at 8/7
# of the training size, whose centre crop is 77% of it), as BENCHMARKS.md measured it.
PHOTO_CROP_AREA = (0.35, 1.0)


_GLOBAL_RNG = threading.Lock()


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "resnet18"
    image_size: int = 32
    batch_size: int = 64
    seed: int = 0
    pretrained: bool = False
    weights_path: str = ""  # a local state_dict file for the pretrained backbone
    if_no_weights: str = "fail"  # when pretrained weights are missing: "fail" or "scratch"
    freeze_epochs: int = 1  # pretrained only: epochs that train the head alone
    augment: bool = True  # random affine + lighting, on batches of tensors
    augmentation: str = "digits"  # the augmentation style: "digits" or "photos"
    flip: bool = False  # horizontal flips: right for photos, wrong for digits and text
    resize: str = "squash"  # how pictures become squares (ursa.images.RESIZE_POLICIES)
    resize_ratio: float = 1.0  # the cache's size over image_size (tasks.recipes.Recipe)
    compile: bool = False  # torch.compile the model (CUDA; measure first: bench_gpu.py)

    def __post_init__(self) -> None:
        check_arch(self.arch)
        if self.image_size < 16:
            raise ValueError(f"TrainConfig.image_size is {self.image_size}, expected >= 16.")
        if self.batch_size < MIN_TRAINING_BATCH:
            raise ValueError(
                f"TrainConfig.batch_size is {self.batch_size}, expected >= "
                f"{MIN_TRAINING_BATCH}: batch norm cannot train on one image at a time."
            )
        if self.if_no_weights not in IF_NO_WEIGHTS:
            raise ValueError(
                f"TrainConfig.if_no_weights is '{self.if_no_weights}', "
                f"expected one of {IF_NO_WEIGHTS}."
            )
        if self.freeze_epochs < 0:
            raise ValueError(f"TrainConfig.freeze_epochs is {self.freeze_epochs}, expected >= 0.")
        if not self.resize_ratio >= 1.0:
            raise ValueError(f"TrainConfig.resize_ratio is {self.resize_ratio}, expected >= 1.")
        for name, value, allowed in (
            ("augmentation", self.augmentation, AUGMENTATIONS),
            ("resize", self.resize, RESIZE_POLICIES),
        ):
            if value not in allowed:
                raise ValueError(f"TrainConfig.{name} is '{value}', expected one of {allowed}.")

    @property
    def resize_size(self) -> int:
        """The side pictures are stored at in the cache, and resized to when served, before
        the cut to ``image_size`` (256 for the photos' 224; ``image_size`` for the digits)."""
        return round(self.image_size * self.resize_ratio)


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
    initial_loss: float = math.nan  # the first mini-batch's loss, before any update
    diagnosis: str = ""
    evidence: str = ""

    @property
    def usable(self) -> bool:
        """Finite losses and not diagnosed as diverged: a candidate for the sweep's best."""
        return (
            math.isfinite(self.val_loss)
            and math.isfinite(self.train_loss)
            and self.diagnosis != "diverged"
        )

    @property
    def name(self) -> str:
        return f"lr={self.lr:g} epochs={self.epochs}"


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict]  # one record per epoch
    step_losses: list[float]  # training loss of every mini-batch, in order
    # The last epoch's validation pass, per example (loss, predicted class, its probability):
    # the trial's report draws on it instead of predicting the validation set again.
    valid_examples: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


def device_for_training() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout of models and batches on ``device``: channels_last on CUDA, where the
    convolutions want it; NCHW on CPUs, where channels_last trains slower (BENCHMARKS.md)."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """A torchvision model with a fresh head; a pretrained backbone from a local file only
    (:func:`tasks.weights.resolve_weights` downloads it, once, before any trial starts)."""
    if not config.pretrained:
        return new_model(config.arch, num_classes)
    path = local_weights_file(config.arch, config.weights_path)
    if path is None:
        raise WeightsUnavailable(
            f"Pretrained weights for '{config.arch}' are not on this machine "
            f"(weights_path '{config.weights_path}'); resolve_weights finds or downloads them."
        )
    try:
        return new_model(
            config.arch, num_classes, torch.load(path, map_location="cpu", weights_only=True)
        )
    except (RuntimeError, KeyError) as exc:
        raise WeightsUnavailable(
            f"The weights file {path} does not fit '{config.arch}': {exc}"
        ) from exc


def seeded_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """:func:`build_model` with its weights drawn from ``config.seed``. The draws come from
    torch's one global generator, which the threads of concurrent trials share: one model is
    initialised at a time, or their draws interleave and no trial is reproducible."""
    with _GLOBAL_RNG:
        torch.manual_seed(config.seed)
        return build_model(config, num_classes)


def set_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze everything but the head and the batch-norm layers (see
    :func:`tasks.architectures.is_norm`)."""
    new_head = head(model)
    for module in model.modules():
        trainable = not frozen or is_norm(module) or module is new_head
        for p in module.parameters(recurse=False):
            p.requires_grad_(trainable)


def training_phases(trial: Trial, config: TrainConfig) -> list[tuple[str, int]]:
    """[(phase, epochs)]: "frozen" then "unfrozen" when pretrained, else one "scratch" phase.
    The frozen phase never takes every epoch: at least one epoch trains the whole network."""
    if not config.pretrained:
        return [("scratch", trial.epochs)]
    frozen = min(config.freeze_epochs, trial.epochs - 1)
    return [(name, n) for name, n in (("frozen", frozen), ("unfrozen", trial.epochs - frozen)) if n]


def phase_optimizer(model: nn.Module, phase: str, lr: float) -> tuple[torch.optim.Optimizer, list]:
    if phase == "unfrozen":
        base = lr * UNFROZEN_BASE
        rates = [base / d for d in LAYER_GROUP_DIVISORS]
        groups = [{"params": ps, "lr": r} for ps, r in zip(layer_groups(model), rates, strict=True)]
    else:
        rates = [lr]
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    # fused: one kernel for all parameters instead of a loop over them (BENCHMARKS.md).
    return torch.optim.AdamW(groups, lr=lr, weight_decay=1e-2, fused=True), rates


def batch_bounds(n: int, batch_size: int, min_size: int = 1) -> list[tuple[int, int]]:
    """[(start, stop)] of the mini-batches of ``n`` examples: ``batch_size`` each, the last
    one what is left, merged into the one before when it would hold fewer than ``min_size``.
    With fewer than ``min_size`` examples in all there is no batch: nothing can be learnt
    from them (callers refuse such data before training; see :mod:`tasks.data_checks`)."""
    if n < min_size:
        return []
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_size:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def index_batches(
    n: int,
    batch_size: int,
    generator: torch.Generator | None,
    device: torch.device | None = None,
    min_size: int = 1,
):
    """Index batches (:func:`batch_bounds`), shuffled when a (CPU) generator is given; the
    order moves to ``device`` once per epoch, not once per batch. Training passes
    ``min_size=MIN_TRAINING_BATCH``; evaluation takes every example as it comes."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    if device is not None:
        order = order.to(device)
    for start, stop in batch_bounds(n, batch_size, min_size):
        yield order[start:stop]


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    flip: bool = False,
    peak: float = 1.0,
    style: str = "digits",
    size: int | None = None,
) -> torch.Tensor:
    """Random affine and lighting for a whole float batch in [0, ``peak``] at once: one
    ``grid_sample`` instead of a PIL transform per image; ``flip`` adds mirror images.
    ``size``: the output side (default: the input's). A larger input (the photos' cache, 8/7
    of the training size) is sampled straight into it, so that a crop reads stored pixels
    instead of upscaling a smaller image.

    - "digits": rotate ±10°, scale 0.9-1.1, shift ±1/8, contrast 0.8-1.2.
    - "photos" (lesson 2's ``RandomResizedCrop`` + ``aug_transforms``, on the batch): a
      random crop of ``PHOTO_CROP_AREA`` of the area with aspect ratio 3/4-4/3 stretched to
      the output square, rotate ±10°, brightness and contrast 0.8-1.2, edges reflected.
    """
    b, channels = x.shape[:2]
    size = x.shape[-1] if size is None else size
    # Drawn where the generator lives (the GPU on CUDA): a copy per batch would sync.
    r = torch.rand(b, 8 if style == "photos" else 6, generator=generator, device=generator.device)
    r = r.to(x.device)
    angle = (r[:, 0] - 0.5) * math.radians(20)
    mirror = torch.where(r[:, 2] < 0.5, -1.0, 1.0) if flip else torch.ones_like(r[:, 2])
    if style == "photos":
        low, high = PHOTO_CROP_AREA
        area = low + (high - low) * r[:, 1]
        ratio = torch.exp((r[:, 6] - 0.5) * 2 * math.log(4 / 3))
        w, h = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
        shift_x, shift_y = (2 * r[:, 3] - 1) * (1 - w), (2 * r[:, 4] - 1) * (1 - h)
    else:
        w = h = 1.0 / (0.9 + 0.2 * r[:, 1])
        shift_x, shift_y = (r[:, 3] - 0.5) * 0.5, (r[:, 4] - 0.5) * 0.5
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * w * mirror, -sin * w, shift_x], 1),
            torch.stack([sin * h * mirror, cos * h, shift_y], 1),
        ],
        1,
    ).to(x.dtype)
    grid = F.affine_grid(theta, [b, channels, size, size], align_corners=False)
    padding = "reflection" if style == "photos" else "border"
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    # ((out - mean) * contrast + mean) * brightness as one multiply-add: each pass over a
    # 224 px batch counts.
    contrast = (0.8 + 0.4 * r[:, 5]).view(b, 1, 1, 1).to(x.dtype)
    if style == "photos":
        contrast = contrast * (0.8 + 0.4 * r[:, 7]).view(b, 1, 1, 1).to(x.dtype)
        brightness = (0.8 + 0.4 * r[:, 7]).view(b, 1, 1, 1).to(x.dtype)
    else:
        brightness = 1.0
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    offset = mean * (brightness - contrast)
    return torch.addcmul(offset, out, contrast).clamp_(0.0, peak)


@functools.cache
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``uint8 * scale + shift == normalise(uint8 / 255, MEAN, STD)``, made
    once per device: building them per batch copied them to the GPU each step, and that
    blocking copy made the CPU wait for the GPU at every step."""
    std, mean = torch.tensor(STD).view(1, 3, 1, 1), torch.tensor(MEAN).view(1, 3, 1, 1)
    return (1.0 / (255.0 * std)).to(device), (-mean / std).to(device)


def model_inputs(
    x: torch.Tensor,
    device: torch.device,
    generator: torch.Generator | None = None,
    flip: bool = False,
    style: str = "digits",
    size: int | None = None,
) -> torch.Tensor:
    """A uint8 batch -> the model's normalised float input in :func:`memory_format`,
    augmented when a generator is given. Augmentation works on 0-255 and the division by 255
    is folded into the normalisation: one multiply-add that also writes the layout. At 224 px
    on a GPU each pass over the batch is a visible share of a resnet18 step.

    ``size``: the model's input side (default: the batch's). A larger batch (a cache at
    ``TrainConfig.resize_size``) is cut to it: by the random-resized crop of :func:`augment`
    when a generator is given, else at its centre, before it moves to the device, exactly
    as serving cuts the picture (:func:`ursa.images.centre_span`)."""
    if generator is None and size is not None and size < x.shape[-1]:
        centre = centre_span(x.shape[-1], size)
        x = x[..., centre, centre]
    batch = x.to(device, non_blocking=True).float()
    if generator is not None:
        batch = augment(batch, generator, flip, peak=255.0, style=style, size=size)
    scale, shift = _normalisation(batch.device)
    out = torch.empty_like(batch, memory_format=memory_format(batch.device))
    return torch.addcmul(shift, batch, scale, out=out)


def autocast_for(device: torch.device):
    # bf16 autocast on CUDA; on these CPUs (no bf16 units) plain float32 is faster.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _resident(data: Tensors, device: torch.device) -> Tensors:
    """On CUDA, move the uint8 images to the GPU once when they take under a quarter of its
    free memory, so that no batch crosses the PCIe bus again; otherwise leave them in RAM."""
    if device.type != "cuda":
        return data
    size = sum(t.nbytes for t in (data.x_train, data.x_valid))
    free, _ = torch.cuda.mem_get_info(device)
    if size > free / 4:
        return data
    return Tensors(
        data.classes,
        data.x_train.to(device),
        data.y_train.to(device),
        data.x_valid.to(device),
        data.y_valid.to(device),
    )


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: Tensors,
    config: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
    aug_generator: torch.Generator | None = None,
) -> tuple[float, float, list[float]]:
    """One pass over the training set; returns (mean loss, accuracy, loss per mini-batch).
    ``generator`` (CPU) shuffles; ``aug_generator`` (on ``device``) draws the augmentations.

    Losses stay on the device until the epoch ends: a ``.item()`` per step would make the
    CPU wait for the GPU at every step.
    """
    model.train()
    criterion = nn.CrossEntropyLoss()
    losses, correct, seen = [], torch.zeros((), device=device), 0
    aug = aug_generator if config.augment else None
    n = len(data.y_train)
    for idx in index_batches(
        n, config.batch_size, generator, data.x_train.device, MIN_TRAINING_BATCH
    ):
        x = model_inputs(
            data.x_train[idx], device, aug, config.flip, config.augmentation, config.image_size
        )
        y = data.y_train[idx].to(device, non_blocking=True)
        with autocast_for(device):
            logits = model(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.detach())
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    if not losses:
        return math.nan, math.nan, []
    step_losses = torch.stack(losses).float().cpu().tolist()
    weights = [
        stop - start for start, stop in batch_bounds(n, config.batch_size, MIN_TRAINING_BATCH)
    ]
    mean = sum(w * v for w, v in zip(weights, step_losses, strict=True)) / seen
    return mean, correct.item() / seen, step_losses


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: torch.Tensor | Selection,
    y: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    size: int | None = None,
) -> tuple[float, float, torch.Tensor]:
    """Returns (mean loss, accuracy, predicted class per example); ``size`` as in
    :func:`model_inputs` (the centre of a larger cache)."""
    examples = predict_examples(model, x, y, device, batch_size, size)
    return (*loss_and_accuracy(examples, y), examples[1])


def loss_and_accuracy(
    examples: tuple[torch.Tensor, torch.Tensor, torch.Tensor], y: torch.Tensor
) -> tuple[float, float]:
    """(mean loss, accuracy) of :func:`predict_examples`' output against the labels ``y``."""
    losses, predicted, _ = examples
    accuracy = (predicted == y.cpu()).float().mean().item() if len(y) else float("nan")
    return losses.sum().item() / max(len(y), 1), accuracy


@torch.inference_mode()
def predict_examples(
    model: nn.Module,
    x: torch.Tensor | Selection,
    y: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per example: (loss, predicted class, probability of the prediction), all on the CPU;
    ``size`` as in :func:`model_inputs` (the centre of a larger cache)."""
    model.eval()
    losses, preds, probs = [], [], []
    for idx in index_batches(len(y), batch_size, None, x.device):
        with autocast_for(device):
            logits = model(model_inputs(x[idx], device, size=size)).float()
        target = y[idx].to(device)
        losses.append(F.cross_entropy(logits, target, reduction="none"))
        p, c = logits.softmax(1).max(1)
        preds.append(c)
        probs.append(p)
    if not losses:
        empty = torch.zeros(0)
        return empty, empty.long(), empty
    return torch.cat(losses).cpu(), torch.cat(preds).cpu(), torch.cat(probs).cpu()


def recompute_batch_norm(
    model: nn.Module, data: Tensors, config: TrainConfig, device: torch.device, seed: int
) -> None:
    """Batch-norm running statistics measured afresh on up to ``BN_RECOMPUTE_BATCHES``
    training batches (unaugmented, as validation sees images): torch's ``update_bn``, a
    forward pass in train mode without gradients. Its own seeded order, so that training's
    shuffling is the same with or without it."""
    order = torch.Generator().manual_seed(seed)
    batches = itertools.islice(
        index_batches(
            len(data.y_train), config.batch_size, order, data.x_train.device, MIN_TRAINING_BATCH
        ),
        BN_RECOMPUTE_BATCHES,
    )
    with autocast_for(device):
        inputs = (
            model_inputs(data.x_train[idx], device, size=config.image_size) for idx in batches
        )
        update_bn(inputs, model)


def fit(trial: Trial, config: TrainConfig, data: Tensors, on_epoch=None) -> FitResult:
    """Train one model, phase by phase, each on a one-cycle schedule; ``on_epoch(record)``
    after every epoch. Stops early once the training loss is no longer finite."""
    device = device_for_training()
    data = _resident(data, device)
    model = seeded_model(config, len(data.classes)).to(device, memory_format=memory_format(device))
    trained = torch.compile(model) if config.compile else model
    steps = len(batch_bounds(len(data.y_train), config.batch_size, MIN_TRAINING_BATCH))
    generator = torch.Generator().manual_seed(config.seed)
    aug_generator = torch.Generator(device=device).manual_seed(config.seed)
    history: list[dict] = []
    step_losses: list[float] = []
    examples = None
    for phase, epochs in training_phases(trial, config):
        set_frozen(model, phase == "frozen")
        optimizer, rates = phase_optimizer(model, phase, trial.lr)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=rates, total_steps=max(steps * epochs, 1)
        )
        for _ in range(epochs):
            start = time.perf_counter()
            train_loss, train_acc, losses = train_one_epoch(
                trained, optimizer, scheduler, data, config, generator, device, aug_generator
            )
            train_seconds = time.perf_counter() - start  # losses came back: the GPU is done
            step_losses += losses
            recompute = len(step_losses) < BN_RECOMPUTE_STEPS and math.isfinite(train_loss)
            if recompute:
                recompute_batch_norm(model, data, config, device, config.seed + len(history))
            examples = predict_examples(
                trained, data.x_valid, data.y_valid, device, size=config.image_size
            )
            val_loss, val_acc = loss_and_accuracy(examples, data.y_valid)
            record = {
                "epoch": len(history),
                "steps": len(step_losses),
                "bn_recomputed": float(recompute),
                "train_loss": train_loss,
                "train_accuracy": train_acc,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "epoch_seconds": time.perf_counter() - start,
                "train_seconds": train_seconds,
            }
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
            if not math.isfinite(train_loss):
                set_frozen(model, False)
                # Diverged: more epochs only burn time.
                return FitResult(model, history, step_losses, examples)
    set_frozen(model, False)
    if history:
        # The epoch's training loss is a running mean over augmented batches while the model
        # was still learning, so it sits above the validation loss even when the model fits
        # well. The diagnosis compares like with like: the final model on (a sample of) the
        # training images, measured exactly as the validation loss is.
        low, high = CLEAN_TRAIN_SAMPLE
        n = len(data.y_train)
        # Evenly spread over the training set, which is stored class by class: its first
        # images would be a few classes only.
        sample = slice(None, None, max(1, n // min(max(len(data.y_valid), low), high)))
        clean_loss, _, _ = evaluate(
            trained, data.x_train[sample], data.y_train[sample], device, size=config.image_size
        )
        history[-1]["train_eval_loss"] = clean_loss
    return FitResult(model, history, step_losses, examples)


def diagnose_fit(
    history: list[dict], initial_loss: float, best_val_accuracy: float | None = None
) -> Diagnosis:
    """The lesson-2 diagnosis of an image-classifier trial from its epoch records."""
    return diagnose(
        [h["train_loss"] for h in history],
        [h["val_loss"] for h in history],
        initial_loss=initial_loss,
        val_accuracy=history[-1]["val_accuracy"] if history else None,
        best_val_accuracy=best_val_accuracy,
        clean_train_loss=history[-1].get("train_eval_loss") if history else None,
        steps=history[-1].get("steps") if history else None,
    )
