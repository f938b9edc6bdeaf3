"""The model package: the one contract between training and serving.

Training writes it with :func:`log_package` inside an MLflow run; the server reads it with
:func:`load_package`. A package is an MLflow PyTorch model in the ``pt2`` (torch.export)
format, so loading it needs neither the training code nor unpickling any project class,
plus a small JSON-able ``ursa`` metadata block carried in the MLmodel file:

    {"format": "ursa-model/1", "arch": "resnet18", "classes": [...], "image_size": 32,
     "resize": "squash", "resize_size": 32, "mean": [...], "std": [...], "metrics": {...},
     "dataset_digest": "..."}

``resize`` is the resize policy the model was trained with (:data:`ursa.images.RESIZE_POLICIES`;
packages written before it existed were squashed). ``resize_size`` is the square the picture
is resized to before its centre ``image_size`` square is cut (the photos recipe: 256 for 224,
its training cache's size; packages without it, and the digits, resize straight to
``image_size``). :func:`preprocess` turns pictures into the model's input with
:func:`ursa.images.input_pixels`, the function training's cache uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ursa.images import RESIZE_POLICIES, input_pixels

FORMAT = "ursa-model/1"
REQUIRED_KEYS = ("format", "arch", "classes", "image_size", "mean", "std")
# The package's runtime needs, pinned to what is installed, so MLflow spawns no pip inference.
PIP_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]


class PackageError(ValueError):
    """The model at a URI is not a usable Ursa model package."""


def preprocess(
    images: list[Image.Image],
    image_size: int,
    mean,
    std,
    resize: str = "squash",
    resize_size: int | None = None,
) -> torch.Tensor:
    """PIL images -> a normalised float batch (N, 3, S, S), resized by policy ``resize`` to
    ``resize_size`` (default: ``image_size``), then cut to their centre ``image_size``."""
    arrays = [input_pixels(im, image_size, resize, resize_size) for im in images]
    # Contiguous NCHW: the permuted view is laid out channels_last, on which the exported
    # model's convolutions (NCHW weights) run slower on CPUs (BENCHMARKS.md).
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return normalise(batch.float().div_(255.0), mean, std)


def normalise(batch: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    return (batch - m) / s


def check_meta(meta: Any, where: str) -> dict:
    if not isinstance(meta, dict):
        raise PackageError(f"Model at '{where}' has no 'ursa' metadata block.")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise PackageError(f"Model at '{where}' lacks metadata keys {missing}.")
    if meta["format"] != FORMAT:
        raise PackageError(
            f"Model at '{where}' has format '{meta['format']}', expected '{FORMAT}'."
        )
    if not meta["classes"]:
        raise PackageError(f"Model at '{where}' has an empty class list.")
    if resize_policy(meta) not in RESIZE_POLICIES:
        raise PackageError(
            f"Model at '{where}' has resize policy '{meta['resize']}', "
            f"expected one of {RESIZE_POLICIES}."
        )
    resized = meta.get("resize_size")
    if resized is not None and not (isinstance(resized, int) and resized >= meta["image_size"]):
        raise PackageError(
            f"Model at '{where}' has resize_size {resized!r}, expected an integer of at least "
            f"its image_size {meta['image_size']}."
        )
    return meta


def resize_policy(meta: dict) -> str:
    return meta.get("resize", "squash")


def resize_size(meta: dict) -> int:
    """The square pictures are resized to before the centre cut (older packages: none)."""
    return meta.get("resize_size", meta["image_size"])


def log_package(model: torch.nn.Module, meta: dict, name: str = "model") -> str:
    """Log ``model`` with its metadata to the active MLflow run; return the model URI."""
    import mlflow

    meta = check_meta({"format": FORMAT, **meta}, "<being logged>")
    model = batch_norms_folded(model.cpu().eval())
    # Batch 2, not 1: torch.export specialises a dimension of size 1, fixing the batch size.
    example = np.zeros((2, 3, meta["image_size"], meta["image_size"]), dtype=np.float32)
    info = mlflow.pytorch.log_model(
        model,
        name=name,
        input_example=example,
        pip_requirements=PIP_REQUIREMENTS,
        metadata={"ursa": meta},
        # MLflow would reload the package and predict on the example (1.3 s here); the server
        # checks every package it loads (load_package, then a warm-up batch) before serving it.
        validate_serving_input=False,
    )
    return info.model_uri


def batch_norms_folded(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the eval-mode ``model`` with each batch norm folded into the layer before it.

    The predictions are the same (to float rounding) with a third fewer operators. The exported
    graph runs each operator from Python, taking the GIL back between operators, so under
    load it competes with the server's event loop once per operator: fewer operators, more
    requests per second at the same in-process speed (BENCHMARKS.md).
    """
    from torch.fx.experimental.optimization import fuse

    return fuse(model)


@dataclass
class ModelPackage:
    module: torch.nn.Module
    meta: dict
    uri: str

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @torch.inference_mode()
    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        """Class probabilities (N, C) for RGB images."""
        meta = self.meta
        batch = preprocess(
            images,
            meta["image_size"],
            meta["mean"],
            meta["std"],
            resize_policy(meta),
            resize_size(meta),
        )
        logits = self.module(batch)
        if logits.ndim != 2 or logits.shape[1] != len(self.classes):
            raise PackageError(
                f"Model at '{self.uri}' returned shape {tuple(logits.shape)}, "
                f"expected (N, {len(self.classes)})."
            )
        return torch.softmax(logits.float(), dim=1).numpy()


def load_package(uri: str, tracking_uri: str | None = None) -> ModelPackage:
    """Load and check the package at ``uri`` (``models:/name/3``, ``runs:/...``, a path)."""
    import mlflow
    from mlflow.models import Model

    try:
        location = resolve_models_uri(uri, tracking_uri)
        local = Path(mlflow.artifacts.download_artifacts(location, tracking_uri=tracking_uri))
        meta = check_meta((Model.load(str(local / "MLmodel")).metadata or {}).get("ursa"), uri)
        module = mlflow.pytorch.load_model(str(local))
    except PackageError:
        raise
    except Exception as exc:  # corrupt artifacts, wrong flavour, unreadable files
        raise PackageError(
            f"Model at '{uri}' could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    return ModelPackage(module=module, meta=meta, uri=uri)


def resolve_models_uri(uri: str, tracking_uri: str | None) -> str:
    """A ``models:/`` URI -> its artifact location, looked up in the store at ``tracking_uri``.

    MLflow resolves ``models:/`` URIs through the process-wide registry whatever tracking URI
    it is handed, so without this an explicit ``tracking_uri`` would be silently ignored.
    """
    if not tracking_uri or not uri.startswith("models:/"):
        return uri
    from mlflow import MlflowClient
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    found = get_model_name_and_version(client, uri)
    if len(found) == 1:  # models:/<logged model id>
        return client.get_logged_model(found[0]).artifact_location
    return client.get_model_version_download_uri(*found)
