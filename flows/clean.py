"""clean: rank the images most likely mislabelled and publish the review link.

It only ranks: a person decides on the review page (``/review``), the decisions go into the
cleaning ledger, and the next ingest (the next scheduled pipeline run) applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from tasks.architectures import Arch
from tasks.cleaning import Ranking, rank_task
from tasks.cleaning_report import log_ranking_task, publish_review_task, review_url
from tasks.data_checks import check_dataset_task
from tasks.manifest import load_dataset
from tasks.policies import HOUR
from tasks.tracking import experiment_id, use_tracking_uri
from tasks.train import TrainConfig
from ursa.images import ResizePolicy
from ursa.settings import Settings


@dataclass
class CleanResult:
    ranking: Ranking
    run_id: str  # the MLflow run holding the ranking table and the top-suspects grid
    review_url: str


@flow(name="clean", log_prints=True, timeout_seconds=24 * HOUR)
def clean(
    dataset_manifest: str = "",
    folds: int = 4,
    epochs: int = 3,
    lr: float = 3e-3,
    arch: Arch = "resnet18",
    image_size: int = 32,
    resize: ResizePolicy = "squash",
    batch_size: int = 64,
    seed: int = 0,
    review: str = "",
) -> CleanResult:
    """Rank the dataset's images by how likely their label is wrong (k-fold out-of-sample
    probabilities; see tasks/cleaning.py), log the ranking to MLflow and publish the link to
    the review page (``review``, default: the configured server's /review; see
    tasks/cleaning_report.py)."""
    settings = Settings.from_env()
    dataset = load_dataset(dataset_manifest or settings.layout.dataset_manifest())
    check_dataset_task(dataset, need_valid=False)  # folds cut train and valid alike
    config = TrainConfig(
        arch=arch, image_size=image_size, resize=resize, batch_size=batch_size, seed=seed
    )
    ranking = rank_task(dataset, folds, lr, epochs, config)
    use_tracking_uri(settings.tracking_uri)  # the ranking's run is opened through it
    run_id = log_ranking_task(ranking, experiment_id(settings), settings.data_dir)
    url = review_url(settings, review)
    publish_review_task(ranking, url, run_id)
    print(
        f"clean: ranked {ranking.n_images} images ({ranking.n_confident_issues} confident "
        f"issues, {ranking.n_label_conflicts} label conflicts); review them at {url}"
    )
    return CleanResult(ranking=ranking, run_id=run_id, review_url=url)
