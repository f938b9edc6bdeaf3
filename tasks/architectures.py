"""Torchvision classification architectures by name: the one owner of which names Ursa
accepts, how a model gets a new head, and how fine-tuning splits it into layer groups.

Any name in ``torchvision.models.list_models(module=torchvision.models)`` works, as any
backbone does in fastai's ``vision_learner``. Two rules cover every family there:

- **The head** is the model's last ``Linear`` or ``Conv2d`` in registration order (``fc`` for
  ResNet, RegNet, ShuffleNet, Inception; ``classifier[-1]`` for ConvNeXt, EfficientNet,
  MobileNet, VGG; ``heads.head`` for ViT; ``head`` for Swin; SqueezeNet's final 1x1
  convolution). It is replaced by a fresh layer of the same kind with one output per class.
- **Layer groups** (discriminative rates): the backbone's stages, where the family keeps them
  (:data:`_STAGES`), are cut in two halves; the stem joins the first half, anything between
  the stages and the head joins the second, and the head is the third group. For ResNet that
  is fast.ai's split: stem + layer1-2, layer3-4, head. A family without known stages is cut in
  the middle of its parameter list.
"""

from __future__ import annotations

import difflib
import functools
from typing import Annotated

import torchvision
from pydantic import AfterValidator
from torch import nn

# Where each family keeps its stages, first match wins (attribute paths; "layer1..4" lists).
_STAGES: tuple[tuple[str, ...], ...] = (
    ("layer1", "layer2", "layer3", "layer4"),  # resnet, resnext, wide_resnet
    ("trunk_output",),  # regnet
    ("encoder.layers",),  # vit
    ("blocks",),  # maxvit
    ("layers",),  # mnasnet
    ("features",),  # convnext, efficientnet, mobilenet, vgg, alexnet, densenet, squeezenet, swin
)
# Auxiliary classifiers that only run in training mode (Inception v3, GoogLeNet): dropped, as
# torchvision does when a pretrained model is asked for without them.
_AUX_HEADS = ("AuxLogits", "aux1", "aux2")


@functools.cache
def classification_models() -> tuple[str, ...]:
    """Every torchvision classification architecture name, sorted."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_arch(name: str) -> str:
    """``name`` if torchvision has a classification model of that name, else a ValueError
    that says where the names come from and which ones are close."""
    known = classification_models()
    if name in known:
        return name
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Architecture '{name}' is not a torchvision classification model.{hint} Any name in "
        f"torchvision.models.list_models(module=torchvision.models) works: {', '.join(known)}."
    )


# A flow parameter naming an architecture: Prefect refuses an unknown name with the message.
Arch = Annotated[str, AfterValidator(check_arch)]


def new_model(arch: str, num_classes: int, state_dict: dict | None = None) -> nn.Module:
    """Architecture ``arch`` with ``state_dict`` loaded (ImageNet weights) when given, auxiliary
    heads dropped, and a fresh head with ``num_classes`` outputs."""
    model = torchvision.models.get_model(check_arch(arch), weights=None)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in _AUX_HEADS:
            if hasattr(model, name):
                setattr(model, name, None)
    path = head_path(model)
    old = model.get_submodule(path)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes)
    else:  # SqueezeNet classifies with a 1x1 convolution
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size)
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent), leaf, new)
    return model


def head_path(model: nn.Module) -> str:
    """The attribute path of the model's head: its last Linear or Conv2d."""
    found = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv2d layer to replace.")
    return found[-1]


def head(model: nn.Module) -> nn.Module:
    return model.get_submodule(head_path(model))


def num_classes(model: nn.Module) -> int:
    layer = head(model)
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Parameters in three groups, early to late: stem + first half of the stages, second
    half of the stages (and anything up to the head), the head."""
    head_ids = {id(p) for p in head(model).parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    stages = _stages(model)
    if stages:
        late_ids = {id(p) for s in stages[len(stages) // 2 :] for p in s.parameters()}
        cut = next(i for i, p in enumerate(body) if id(p) in late_ids)
    else:
        cut = len(body) // 2
    return [body[:cut], body[cut:], list(head(model).parameters())]


def _stages(model: nn.Module) -> list[nn.Module]:
    for paths in _STAGES:
        try:
            found = [model.get_submodule(p) for p in paths]
        except AttributeError:
            continue
        if len(found) == 1:  # one container: its children are the stages
            found = [m for m in found[0].children() if any(True for _ in m.parameters())]
        if len(found) >= 2:
            return found
    return []


def is_norm(module: nn.Module) -> bool:
    """Batch norms keep training while the backbone is frozen (fast.ai's ``train_bn``): their
    statistics must adapt to the new data even while the convolutions stay put."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)
