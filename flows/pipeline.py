"""pipeline: ingest, train and release, in that order."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from flows.ingest import IngestResult, ingest
from flows.release import ReleaseOutcome, release
from flows.train import DEFAULT_EPOCHS, DEFAULT_LRS, TrainResult, train
from tasks.sources import EMBEDDED


@dataclass
class PipelineResult:
    ingest: IngestResult
    train: TrainResult
    release: ReleaseOutcome


@flow(name="pipeline", log_prints=True)
def pipeline(
    source: str = EMBEDDED,
    max_per_class: int | None = None,
    lrs: list[float] = DEFAULT_LRS,
    epochs: list[int] = DEFAULT_EPOCHS,
    arch: str = "resnet18",
    image_size: int = 32,
    seed: int = 0,
    margin: float = 0.0,
    serve_url: str = "",
) -> PipelineResult:
    """From per-class URL lists to a registered champion served over HTTP."""
    ingested = ingest(source=source, max_per_class=max_per_class, seed=seed)
    trained = train(
        dataset_manifest=ingested.dataset.manifest_path,
        lrs=lrs,
        epochs=epochs,
        arch=arch,
        image_size=image_size,
        seed=seed,
    )
    released = release(
        model_uri=trained.model_uri,
        dataset_manifest=ingested.dataset.manifest_path,
        margin=margin,
        serve_url=serve_url,
    )
    return PipelineResult(ingest=ingested, train=trained, release=released)
