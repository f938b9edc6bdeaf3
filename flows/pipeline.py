"""pipeline: ingest, train and release, in that order."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

from prefect import flow
from pydantic import Field

from flows.clean import CleanResult
from flows.clean import clean as clean_flow
from flows.ingest import IngestResult, ingest
from flows.release import ReleaseOutcome, release
from flows.train import Epochs, Lrs, TrainResult, train
from tasks.architectures import Arch
from tasks.policies import HOUR
from tasks.recipes import DEFAULT_RECIPE, RecipeName
from tasks.reports import publish_pipeline
from tasks.sources import EMBEDDED
from tasks.tracking import experiment_id
from ursa.settings import Settings


@dataclass
class PipelineResult:
    ingest: IngestResult
    train: TrainResult
    release: ReleaseOutcome
    clean: CleanResult | None = None


# Constraints live in the annotations (Prefect validates them and the UI form shows them);
# descriptions live in the docstring, which is where Prefect reads them from.
@flow(name="pipeline", log_prints=True, timeout_seconds=48 * HOUR)
def pipeline(
    source: str = EMBEDDED,
    max_per_class: Annotated[int, Field(ge=1)] | None = None,
    recipe: RecipeName = DEFAULT_RECIPE,
    lrs: Lrs | None = None,
    epochs: Epochs | None = None,
    arch: Arch | None = None,
    image_size: Annotated[int, Field(ge=16, le=512)] | None = None,
    pretrained: bool | None = None,
    seed: Annotated[int, Field(ge=0)] = 0,
    margin: Annotated[float, Field(ge=0)] | None = None,
    serve_url: str = "",
    clean: bool = False,
    shards: Annotated[int, Field(ge=1, le=1024)] = 1,
) -> PipelineResult:
    """From per-class URL lists to a registered champion served over HTTP.

    Args:
        source: Folder of <class>.txt URL lists (one URL per line), one such file, a CSV
            with a url column, a folder of class folders of images, or "embedded".
        max_per_class: Take at most this many URLs per class (empty: all).
        recipe: Training defaults: "digits" (small scans from scratch) or "photos" (lesson 2:
            resnet34 pretrained at 224 px); the empty parameters below take its values.
        lrs: Learning rates of the sweep.
        epochs: Epoch counts of the sweep.
        arch: Any torchvision classification architecture (resnet18, resnet34, resnet50, ...).
        image_size: Training resolution in pixels.
        pretrained: Fine-tune pretrained ImageNet weights (downloaded when missing).
        seed: Seed of the split and of the training.
        margin: Accuracy the candidate must beat the champion by (empty: URSA_RELEASE_MARGIN).
        serve_url: Server to redeploy (empty: URSA_SERVE_URL, or none).
        clean: After training, rank the images most likely mislabelled and publish the
            review link; the next run's ingest applies what people decide there.
        shards: Split the ingest into this many shards, each a flow run of the ingest-shard
            deployment on any worker (all must reach the data folder).
    """
    ingested = ingest(source=source, max_per_class=max_per_class, seed=seed, shards=shards)
    trained = train(
        dataset_manifest=ingested.dataset.manifest_path,
        recipe=recipe,
        lrs=lrs,
        epochs=epochs,
        arch=arch,
        image_size=image_size,
        pretrained=pretrained,
        seed=seed,
    )
    cleaned = None
    if clean:
        cleaned = clean_flow(
            dataset_manifest=ingested.dataset.manifest_path,
            lr=trained.best.lr,
            epochs=trained.best.epochs,
            arch=trained.config.arch,
            image_size=trained.config.image_size,
            resize=trained.config.resize,
            seed=seed,
            review=f"{serve_url.rstrip('/')}/review" if serve_url else "",
        )
    released = release(
        model_uri=trained.model_uri,
        dataset_manifest=ingested.dataset.manifest_path,
        margin=margin,
        serve_url=serve_url,
    )
    settings = Settings.from_env()
    # The links name the server this run redeployed, given here or in URSA_SERVE_URL.
    settings = replace(settings, serve_url=serve_url or settings.serve_url)
    publish_pipeline(settings, experiment_id(settings), trained.parent_run_id, released.release)
    return PipelineResult(ingest=ingested, train=trained, release=released, clean=cleaned)
