"""What a run tells people: outcome tables, leaderboards and release notes, published as
Prefect artifacts (the UI) and returned as plain records (the CLI)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.diagnosis import sweep_advice
from tasks.leaderboard import leaderboard
from tasks.manifest import Dataset, ImageRow, UrlRow, iter_rows
from ursa.settings import Settings

if TYPE_CHECKING:  # types only: the ingest flow reports too, and must not import torch or MLflow
    from tasks.deploy import DeployResult
    from tasks.registry import ReleaseResult
    from tasks.train import TrialResult


def outcome_counts(rows: Iterable[UrlRow]) -> dict[str, int]:
    return dict(Counter(r.outcome for r in rows).most_common())


def dataset_status_counts(dataset: Dataset) -> dict[str, int]:
    rows = iter_rows(Path(dataset.manifest_path), ImageRow)  # a stream: nothing held
    return dict(Counter(r.status for r in rows).most_common())


def publish_ingest(rows: Iterable[UrlRow], dataset: Dataset, url_manifest: Path) -> None:
    outcomes = outcome_counts(rows)
    statuses = dataset_status_counts(dataset)
    create_table_artifact(
        [{"outcome": k, "urls": v} for k, v in outcomes.items()],
        key="ingest-outcomes",
        description="What happened to every URL",
    )
    lines = [
        "# Ingest",
        f"- URLs in: **{sum(outcomes.values())}**; images kept: **{statuses.get('kept', 0)}** "
        f"({dataset.n_train} train / {dataset.n_valid} valid), classes: {len(dataset.classes)}",
        f"- dataset digest: `{dataset.digest}`",
        f"- URL manifest: `{url_manifest}`; dataset manifest: `{dataset.manifest_path}`",
        "",
        "| outcome | URLs |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in outcomes.items()],
        "",
        "| dataset status | images |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in statuses.items()],
    ]
    create_markdown_artifact("\n".join(lines), key="ingest-summary", description="Ingest summary")


def publish_sweep(
    results: list[TrialResult],
    best: TrialResult,
    parent_run_id: str,
    excluded: list[dict] | None = None,
    budget: str = "",
    warnings: list[str] | None = None,
) -> None:
    create_table_artifact(
        [
            {
                "trial": r.name,
                "val_accuracy": round(r.val_accuracy, 4),
                "val_loss": round(r.val_loss, 4),
                "train_loss": round(r.train_loss, 4),
                "diagnosis": r.diagnosis,
                "evidence": r.evidence,
                "seconds": round(r.seconds, 1),
                "best": r.run_id == best.run_id,
                "mlflow_run": r.run_id,
            }
            for r in leaderboard(results)
        ],
        key="sweep-leaderboard",
        description=f"Sweep leaderboard (MLflow parent run {parent_run_id})",
    )
    lines = [
        "# Sweep",
        f"- best: **{best.name}**, validation accuracy **{best.val_accuracy:.4f}** "
        f"({best.diagnosis}: {best.evidence})",
        f"- trained: {budget or sum(r.epochs for r in results)} epochs",
        f"- MLflow parent run: `{parent_run_id}`",
        "",
        "## Excluded trials",
        *(
            [f"- {e['trial']}: **{e['diagnosis']}** ({e['why']})" for e in excluded]
            if excluded
            else ["- none"]
        ),
        "",
        "## Read these numbers with care",
        *(
            [f"- {w}" for w in notes]
            if (notes := [*(warnings or []), *sweep_advice([r.diagnosis for r in results])])
            else ["- nothing to report"]
        ),
    ]
    create_markdown_artifact("\n".join(lines), key="sweep-summary", description="Sweep summary")


def publish_sgd(runs: list[dict], parent_run_id: str) -> None:
    """The SGD-from-scratch runs: final fit and diagnosis per learning rate."""
    create_table_artifact(
        runs, key="sgd-from-scratch", description=f"SGD from scratch (MLflow run {parent_run_id})"
    )


def release_note(result: ReleaseResult, deployed: DeployResult | None, failure: str = "") -> str:
    if failure:
        served = f"**redeploy failed**: {failure}"
    elif deployed:
        served = f"version {deployed.served_version} at {deployed.serve_url}"
    else:
        served = "no server to redeploy (set URSA_SERVE_URL)"
    return (
        f"# Release of {result.model_name}\n"
        f"- candidate: version **{result.candidate_version}**, "
        f"validation accuracy {result.candidate_accuracy:.4f}\n"
        f"- gate: {'promoted' if result.promoted else 'not promoted'} ({result.reason})\n"
        f"- champion: version **{result.champion_version}**\n"
        f"- served: {served}\n"
    )


def publish_release(note: str, key: str = "release-note") -> None:
    create_markdown_artifact(note, key=key, description="Release")


def mlflow_link(ui_url: str, text: str, fragment: str) -> str:
    """A markdown link into the MLflow UI, or the bare text when there is no UI address."""
    return f"[{text}]({ui_url}/#/{fragment})" if ui_url else f"{text} (set URSA_MLFLOW_UI_URL)"


def publish_pipeline(
    settings: Settings, experiment_id: str, parent_run_id: str, release: ReleaseResult
) -> str:
    """The pipeline's one-page answer: links to the sweep, the model version, the server."""
    ui = settings.mlflow_ui_url
    sweep = mlflow_link(
        ui, f"sweep run {parent_run_id}", f"experiments/{experiment_id}/runs/{parent_run_id}"
    )
    version = mlflow_link(
        ui,
        f"{release.model_name} version {release.candidate_version}",
        f"models/{release.model_name}/versions/{release.candidate_version}",
    )
    champion = mlflow_link(
        ui,
        f"version {release.champion_version}",
        f"models/{release.model_name}/versions/{release.champion_version}",
    )
    note = (
        "# Pipeline\n"
        f"- MLflow: {sweep}\n"
        f"- registered: {version} ({'promoted' if release.promoted else 'not promoted'}: "
        f"{release.reason})\n"
        f"- champion: {champion}\n"
        f"- server: {settings.serve_url or 'none configured (URSA_SERVE_URL)'}\n"
    )
    create_markdown_artifact(note, key="pipeline-links", description="Where to look next")
    return note
