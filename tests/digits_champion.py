"""A served champion that classifies the embedded digits without training: nearest centroid.

The tests of the production loop (prediction log, feedback, drift watch) need a model whose
answers mean something on the digits, and no time for a sweep: the class means of the
training images, in the package's own input space, make a linear layer that is right on
most digits, and is logged, registered and crowned like any trained model.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient
from PIL import Image
from torch import nn

from tasks.dedup import build_dataset
from tasks.manifest import Dataset, ImageRow, read_rows
from tasks.sources import local_image_rows
from tasks.verify import verify_rows
from ursa.package import log_package, preprocess
from ursa.settings import Settings

NAME = "digits"
SIZE = 8
MEAN, STD = [0.2] * 3, [0.3] * 3


class NearestCentroid(nn.Module):
    def __init__(self, centroids: torch.Tensor, temperature: float) -> None:
        super().__init__()
        self.linear = nn.Linear(centroids.shape[1], centroids.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(centroids / temperature)
            self.linear.bias.copy_(-(centroids**2).sum(1) / (2 * temperature))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def digits_dataset(digits: Path, data_dir: Path, per_class: int = 30) -> Dataset:
    rows = verify_rows(local_image_rows(digits, data_dir, per_class), data_dir)
    return build_dataset(rows, data_dir, valid_pct=0.3)


def split_images(data_dir: Path, dataset: Dataset, split: str) -> list[tuple[str, Path]]:
    rows = read_rows(Path(dataset.manifest_path), ImageRow)
    return [(r.label, data_dir / r.image_path) for r in rows if r.split == split]


def crown_centroids(data_dir: Path, dataset: Dataset, **settings: object) -> Settings:
    """Log the nearest-centroid model of ``dataset``'s training images as ``digits@champion``
    in a SQLite store in ``data_dir``; the settings of a server for it."""
    uri = f"sqlite:///{data_dir / 'mlflow.db'}"
    by_class: dict[str, list[torch.Tensor]] = {}
    for label, path in split_images(data_dir, dataset, "train"):
        with Image.open(path) as im:
            by_class.setdefault(label, []).append(preprocess([im], SIZE, MEAN, STD)[0])
    classes = sorted(by_class)
    centroids = torch.stack([torch.stack(by_class[c]).mean(0).flatten() for c in classes])
    model = NearestCentroid(centroids, temperature=float(centroids.shape[1]) / 8)
    meta = {"arch": "centroid", "classes": classes, "image_size": SIZE, "mean": MEAN, "std": STD}
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment(
        "digits", artifact_location=(data_dir / "mlartifacts").as_uri()
    )
    with mlflow.start_run(experiment_id=experiment):
        model_uri = log_package(model, {**meta, "dataset_digest": dataset.digest})
    version = mlflow.register_model(model_uri, NAME).version
    MlflowClient(uri).set_registered_model_alias(NAME, "champion", version)
    base = {"log_images_max_bytes": 10_000_000, **settings}
    return Settings(data_dir=data_dir, tracking_uri=uri, model_name=NAME, poll_interval_s=0, **base)
