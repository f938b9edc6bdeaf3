"""monitor: the drift watch. Compare the last window of the prediction log with the
champion's validation data, report, and start the pipeline when the model has drifted or
enough accepted feedback waits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from tasks.drift import Thresholds, drift
from tasks.monitor import (
    accepted_waiting,
    figure_png,
    log_report_task,
    reference_task,
    report_markdown,
    retrain_reason,
    start_pipeline_task,
    window_feedback,
    window_sample,
)
from tasks.policies import HOUR
from tasks.tracking import use_tracking_uri
from ursa.predictions import read_predictions
from ursa.settings import Settings


@dataclass
class MonitorResult:
    verdict: str  # stable | watch | drifted
    reasons: list[str]
    numbers: dict[str, float]
    window_start: str
    window_end: str
    n_window: int
    accepted_waiting: int
    retrain_reason: str  # "" when no retrain was asked for
    pipeline_run_id: str | None  # the started pipeline run, if one was started
    mlflow_run_id: str


@flow(name="monitor", log_prints=True, timeout_seconds=HOUR)
def monitor(
    window_hours: Annotated[float, Field(gt=0, le=24 * 30)] = 1.0,
    dataset_manifest: str = "",
    min_predictions: Annotated[int, Field(ge=1)] = 30,
    min_accepted_feedback: Annotated[int, Field(ge=0)] = 50,
    retrain: bool = True,
    deployment: str = "pipeline/nightly",
) -> MonitorResult:
    """Watch the served model for drift and start a retrain when it is needed.

    Args:
        window_hours: How far back the prediction log is read.
        dataset_manifest: The champion's dataset (empty: <data>/datasets/dataset.csv); its
            validation images are the reference.
        min_predictions: Fewer answers in the window than this give no verdict but stable.
        min_accepted_feedback: Start the pipeline once this many accepted feedback images
            wait for a dataset (0: never for feedback alone).
        retrain: Start the pipeline deployment on drift (off: report only).
        deployment: The deployment to start, as flow/deployment.
    """
    settings = Settings.from_env()
    use_tracking_uri(settings.tracking_uri)  # the report's run is opened through it
    manifest = Path(dataset_manifest or settings.data_dir / "datasets" / "dataset.csv")
    until = datetime.now(UTC)
    since = until - timedelta(hours=window_hours)
    reference = reference_task(settings, manifest)
    window = window_sample(read_predictions(settings.data_dir, since))
    report = drift(
        window,
        reference.sample,
        reference.classes,
        window_feedback(settings.data_dir, since),
        Thresholds(min_predictions=min_predictions),
    )
    waiting = accepted_waiting(settings.data_dir, manifest)
    reason = retrain_reason(report, waiting, min_accepted_feedback)
    png = figure_png(report, window, reference)
    run_id = log_report_task(settings, report, reference, since, until, png, reason)
    print(f"monitor: {report.verdict} over {report.n_window} answers since {since:%H:%M} UTC")
    for line in report.reasons:
        print(f"monitor: {line}")
    pipeline_run = None
    if reason and retrain:
        pipeline_run, outcome = start_pipeline_task(deployment)
        print(f"monitor: retrain because {reason}; {outcome}")
    elif reason:
        print(f"monitor: a retrain is due ({reason}), but retrain is off")
    note = report_markdown(report, reference, since, until, png)
    if reason:
        note += f"\n**Retrain**: {reason}; pipeline run: {pipeline_run or 'not started'}.\n"
    create_markdown_artifact(note, key="drift-report", description=f"Drift: {report.verdict}")
    return MonitorResult(
        verdict=report.verdict,
        reasons=report.reasons,
        numbers=report.numbers,
        window_start=since.isoformat(),
        window_end=until.isoformat(),
        n_window=report.n_window,
        accepted_waiting=waiting,
        retrain_reason=reason,
        pipeline_run_id=pipeline_run,
        mlflow_run_id=run_id,
    )
