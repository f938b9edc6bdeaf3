"""The drift watch's units of work: the champion's reference answers, the window of the
prediction log, the report (MLflow run and Prefect artifact) and the start of a retrain.

The statistics are :mod:`tasks.drift`; the log's format is :mod:`ursa.predictions`.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image
from prefect import task

from tasks.drift import INPUTS, Drift, Sample
from tasks.manifest import ImageRow, read_rows
from tasks.policies import CPU, NETWORK
from ursa.feedback import FEEDBACK, feedback_items, read_feedback
from ursa.ledger import additions, ledger_path, read_entries
from ursa.predictions import input_stats
from ursa.settings import Settings

BATCH = 64


@dataclass(frozen=True)
class Reference:
    """The champion's answers on its validation images."""

    model: str
    version: str
    classes: list[str]
    sample: Sample


def champion_reference(settings: Settings, dataset_manifest: Path) -> Reference:
    """Run the champion over the dataset's validation images, as the server would answer
    them, with their input statistics measured as the server measures uploads."""
    from mlflow import MlflowClient

    from ursa.package import load_package

    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    version = client.get_model_version_by_alias(settings.model_name, "champion").version
    package = load_package(settings.champion_uri, settings.tracking_uri)
    data_dir = Path(dataset_manifest).parent.parent
    rows = [r for r in read_rows(Path(dataset_manifest), ImageRow) if r.split == "valid"]
    if not rows:
        raise ValueError(f"Dataset {dataset_manifest} has no validation images to compare with.")
    labels: list[str] = []
    confidences: list[float] = []
    inputs: dict[str, list[float]] = {k: [] for k in INPUTS}
    for start in range(0, len(rows), BATCH):
        images = []
        for row in rows[start : start + BATCH]:
            with Image.open(data_dir / row.image_path) as opened:
                image = opened.convert("RGB")
            images.append(image)
            stats = input_stats(image)
            for k in INPUTS:
                inputs[k].append(stats[k])
        probabilities = package.probabilities(images)
        labels += [package.classes[i] for i in probabilities.argmax(axis=1)]
        confidences += probabilities.max(axis=1).tolist()
    sample = Sample(labels, np.array(confidences), {k: np.array(v) for k, v in inputs.items()})
    return Reference(settings.model_name, str(version), package.classes, sample)


def window_sample(frame) -> Sample:
    """The log's rows (a DataFrame from :func:`ursa.predictions.read_predictions`)."""
    return Sample(
        [str(label) for label in frame["label"]],
        frame["confidence"].to_numpy(dtype=float),
        {k: frame[k].to_numpy(dtype=float) for k in INPUTS},
    )


def window_feedback(data_dir: Path, since: datetime) -> list[tuple[str, str]]:
    """(person's class, model's class) for the feedback given since ``since``."""
    return [
        (item["label"], item["predicted"])
        for item in feedback_items(read_feedback(data_dir))
        if datetime.fromisoformat(item["at"]) >= since
    ]


def accepted_waiting(data_dir: Path, dataset_manifest: Path) -> int:
    """Accepted feedback images that the dataset does not hold yet: what a retrain adds."""
    added = additions(read_entries(ledger_path(data_dir)))
    try:
        rows = read_rows(Path(dataset_manifest), ImageRow)
    except FileNotFoundError:
        return len(added)
    held = {r.sha256 for r in rows if r.source == FEEDBACK}
    return len(set(added) - held)


def retrain_reason(report: Drift, waiting: int, min_accepted_feedback: int) -> str:
    """Why a retrain should start ("" when it should not)."""
    reasons = []
    if report.verdict == "drifted":
        reasons.append("drifted: " + "; ".join(report.reasons))
    if min_accepted_feedback and waiting >= min_accepted_feedback:
        reasons.append(f"{waiting} accepted feedback images wait (>= {min_accepted_feedback})")
    return " and ".join(reasons)


def report_markdown(
    report: Drift, reference: Reference, since: datetime, until: datetime, figure_png: bytes
) -> str:
    numbers = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(report.numbers.items()))
    reasons = "\n".join(f"- {r}" for r in report.reasons) or "- nothing stands out"
    picture = base64.b64encode(figure_png).decode()
    return (
        f"# Drift watch: {report.verdict}\n\n"
        f"Window {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC: {report.n_window} "
        f"answers, against {report.n_reference} validation images of {reference.model} "
        f"version {reference.version}.\n\n{reasons}\n\n"
        f"![window against validation](data:image/png;base64,{picture})\n\n"
        f"| statistic | value |\n|---|---|\n{numbers}\n"
    )


def figure_png(report: Drift, window: Sample, reference: Reference) -> bytes:
    from tasks.plots import drift_figure

    shown = ("confidence", "brightness", "contrast")
    figure = drift_figure(
        reference.classes,
        report.window_shares,
        report.reference_shares,
        {"confidence": window.confidences, **{k: window.inputs[k] for k in shown[1:]}},
        {
            "confidence": reference.sample.confidences,
            **{k: reference.sample.inputs[k] for k in shown[1:]},
        },
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=60)
    return buffer.getvalue()


def log_report(
    settings: Settings,
    report: Drift,
    reference: Reference,
    since: datetime,
    until: datetime,
    png: bytes,
    retrain: str,
) -> str:
    """An MLflow run for this check, tagged with the model version it watched; its id."""
    import mlflow

    from tasks.tracking import experiment_id

    with mlflow.start_run(
        experiment_id=experiment_id(settings),
        run_name=f"monitor {reference.model} v{reference.version} {until:%Y-%m-%d %H:%M}",
        tags={
            "ursa.role": "monitor",
            "ursa.model": reference.model,
            "ursa.model_version": reference.version,
            "ursa.verdict": report.verdict,
            "ursa.retrain": retrain or "no",
        },
    ) as run:
        mlflow.log_params(
            {
                "window_start": since.isoformat(),
                "window_end": until.isoformat(),
                "n_window": report.n_window,
                "n_reference": report.n_reference,
            }
        )
        mlflow.log_metrics({k: float(v) for k, v in report.numbers.items()})
        mlflow.log_dict(report.as_dict(), "drift.json")
        mlflow.log_image(Image.open(io.BytesIO(png)), "drift.png")
    return run.info.run_id


def start_pipeline(deployment: str) -> tuple[str | None, str]:
    """Start a run of ``deployment`` (its gate decides what is served), unless one is already
    waiting or running: (the started run's id or None, what happened)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    waiting = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        busy = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=waiting))
            ),
            limit=1,
        )
    if busy:
        return None, f"not started: run {busy[0].id} of {deployment} is not finished yet"
    # timeout=0: start it and return; the pipeline takes its own time, and its gate decides.
    run = run_deployment(name=deployment, timeout=0, tags=["ursa-monitor"])
    return str(run.id), f"started {deployment}: flow run {run.id}"


reference_task = task(name="champion-reference", **NETWORK)(champion_reference)
log_report_task = task(name="log-drift-report", **NETWORK)(log_report)
start_pipeline_task = task(name="start-pipeline", **CPU)(start_pipeline)
