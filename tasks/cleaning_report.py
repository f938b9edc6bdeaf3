"""What the clean step reports: the ranking as an MLflow run (the method, the counts, the
table, the files and a grid of the top suspects) and the review link as Prefect artifacts.
The ranking itself is computed in :mod:`tasks.cleaning`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from prefect import task
from prefect.cache_policies import NONE

from tasks.cleaning import Ranking
from tasks.grids import image_grid
from ursa.layout import Layout
from ursa.ranking import RankedImage, read_ranking
from ursa.settings import Settings

GRID_SIZE = 16  # top suspects in the MLflow grid image


def suspects_grid(data_dir: Path, ranked: list[RankedImage], size: int = 48):
    """The top suspects as a captioned grid: image, given -> predicted, self-confidence."""
    top = ranked[:GRID_SIZE]
    images = (
        np.stack(
            [
                np.asarray(Image.open(data_dir / r.image_path).convert("RGB").resize((size, size)))
                for r in top
            ]
        ).transpose(0, 3, 1, 2)
        if top
        else np.zeros((0, 3, size, size), np.uint8)
    )
    captions = [
        f"#{r.rank} {r.given} -> {r.predicted}\np(given)={r.self_confidence:.2f}" for r in top
    ]
    return image_grid(images, captions, "Most likely mislabelled (out of sample)")


def log_ranking(ranking: Ranking, experiment_id: str, data_dir: Path) -> str:
    """An MLflow run ``clean <digest>``: the method, the counts, the ranking as a table, the
    ranking files and a grid of the top suspects; returns the run id."""
    import mlflow

    from tasks.ledger import ledger_params
    from tasks.manifest import load_dataset

    ranked, meta = read_ranking(Path(data_dir))
    dataset = load_dataset(meta["dataset_manifest"])
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"clean {ranking.dataset_digest[:8]}"
    ) as run:
        mlflow.set_tag("ursa.role", "clean")
        mlflow.log_params(
            {
                "folds": meta["folds"],
                "lr": meta["lr"],
                "epochs": meta["epochs"],
                "arch": meta["config"]["arch"],
                "image_size": meta["config"]["image_size"],
                "dataset_digest": ranking.dataset_digest,
                "dataset_manifest": meta["dataset_manifest"],
                **ledger_params(dataset),
            }
        )
        mlflow.log_metrics(
            {
                "images_ranked": ranking.n_images,
                "confident_issues": ranking.n_confident_issues,
                "label_conflicts": ranking.n_label_conflicts,
                "fold_accuracy": ranking.fold_accuracy,
            }
        )
        columns = list(asdict(ranked[0]).keys()) if ranked else []
        mlflow.log_table({c: [getattr(r, c) for r in ranked] for c in columns}, "ranking.json")
        mlflow.log_artifact(ranking.csv_path, "cleaning")
        mlflow.log_artifact(ranking.json_path, "cleaning")
        mlflow.log_image(suspects_grid(Path(data_dir), ranked), artifact_file="top_suspects.png")
        return run.info.run_id


def review_url(settings: Settings, given: str = "") -> str:
    """Where people review: ``given``, else the configured server's ``/review``."""
    if given:
        return given
    base = settings.serve_url or f"http://{settings.serve_host}:{settings.serve_port}"
    return f"{base}/review"


def publish_review(ranking: Ranking, url: str, run_id: str, top: int = 10) -> str:
    """The review link as a Prefect link artifact, and a note with the top suspects."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    ranked, _ = read_ranking(Layout.around(ranking.csv_path).root)
    create_link_artifact(
        link=url,
        link_text="Review the suspect images",
        key="review-link",
        description=f"{ranking.n_images} images ranked; decisions go into the cleaning ledger",
    )
    lines = [
        "# Images to review",
        f"- review page: [{url}]({url}) (admin token; decisions go into the cleaning ledger, "
        "which the next ingest applies)",
        f"- ranked: **{ranking.n_images}** images ({ranking.n_confident_issues} confident "
        f"issues, {ranking.n_label_conflicts} label conflicts); fold accuracy "
        f"{ranking.fold_accuracy:.3f}",
        f"- MLflow run: `{run_id}` (ranking table, top-suspects grid)",
        "",
        "| rank | image | given | predicted | confidence | p(given) | flags |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r.rank} | `{r.sha256[:12]}` | {r.given} | {r.predicted} | "
            f"{r.confidence:.2f} | {r.self_confidence:.3f} | {r.flags} |"
            for r in ranked[:top]
        ],
    ]
    note = "\n".join(lines)
    create_markdown_artifact(note, key="clean-summary", description="Suspect images")
    return note


log_ranking_task = task(name="log-ranking", cache_policy=NONE)(log_ranking)
publish_review_task = task(name="publish-review", cache_policy=NONE)(publish_review)
