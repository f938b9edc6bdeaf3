"""The drift watch: streams of images sent to a real server, then the verdict on the log's
window against the champion's validation data; on drift the ``monitor`` flow starts the
``pipeline`` deployment."""

from __future__ import annotations

import dataclasses
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from serving.app import create_app
from tasks.drift import DRIFTED, STABLE, Drift, drift
from tasks.manifest import ImageRow, write_rows
from tasks.monitor import (
    Reference,
    accepted_waiting,
    champion_reference,
    retrain_reason,
    start_pipeline,
    window_sample,
)
from tests.live import LiveServer
from tests.runs import artifacts
from ursa.ledger import ledger_path, record_addition
from ursa.predictions import log_dir, read_predictions
from ursa.settings import Settings


@pytest.fixture(scope="module")
def manifest(digits_champion: Settings) -> Path:
    return digits_champion.data_dir / "datasets" / "dataset.csv"


@pytest.fixture(scope="module")
def reference(digits_champion: Settings, manifest: Path) -> Reference:
    return champion_reference(digits_champion, manifest)


@pytest.fixture(scope="module")
def served(
    digits_champion: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, LiveServer]]:
    settings = dataclasses.replace(
        digits_champion, data_dir=tmp_path_factory.mktemp("monitor") / "served"
    )
    app = create_app(settings)
    with LiveServer(app) as server:
        yield settings, server


def unseen(digits: Path, labels: str, per_class: int) -> list[Path]:
    """Digits outside the champion's dataset (it holds the first 12 files of each class)."""
    return [p for c in labels for p in sorted((digits / c).iterdir())[20 : 20 + per_class]]


def encoded(path: Path, change=None) -> bytes:
    with Image.open(path) as im:
        image = im.convert("RGB")
    if change is not None:
        image = change(image)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def stream(served: tuple[Settings, LiveServer], images: list[bytes]):
    """Send ``images`` to the server as the only answers of its log; the log's rows."""
    settings, server = served
    shutil.rmtree(log_dir(settings.data_dir), ignore_errors=True)
    with server.client() as http:
        for data in images:
            reply = http.post("/predict", content=data, headers={"content-type": "image/png"})
            assert reply.status_code == 200
    assert server.app.state.prediction_log.drain()
    return read_predictions(settings.data_dir)


def dark(image: Image.Image) -> Image.Image:
    return image.point(lambda v: v // 6)


def test_drift_verdicts_on_three_streams(
    served: tuple[Settings, LiveServer], reference: Reference, digits: Path
) -> None:
    like_training = [encoded(p) for p in unseen(digits, "0123456789", 8)]
    window = window_sample(stream(served, like_training))
    report = drift(window, reference.sample, reference.classes)
    assert report.verdict == STABLE, report
    assert report.n_window == 80 and report.n_reference == len(reference.sample.labels)

    one_class = [encoded(p) for p in unseen(digits, "3", 60)]
    report = drift(window_sample(stream(served, one_class)), reference.sample, reference.classes)
    assert report.verdict == DRIFTED, report
    assert any("predicted classes" in r for r in report.reasons), report.reasons
    assert report.window_shares["3"] > 0.5

    for change in (ImageOps.invert, dark):
        changed = [encoded(p, change) for p in unseen(digits, "0123456789", 6)]
        window = window_sample(stream(served, changed))
        report = drift(window, reference.sample, reference.classes)
        assert report.verdict == DRIFTED, (change, report)
        assert any("brightness" in r for r in report.reasons), report.reasons


@pytest.mark.usefixtures("prefect_harness")
def test_monitor_starts_the_pipeline_on_drift_and_not_when_stable(
    served: tuple[Settings, LiveServer],
    digits: Path,
    manifest: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow
    from prefect.client.orchestration import get_client

    from flows.monitor import monitor

    settings, _ = served
    monkeypatch.setenv("URSA_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    monkeypatch.setenv("URSA_MODEL_NAME", settings.model_name)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("pipeline")
        deployment_id = client.create_deployment(flow_id, name="nightly-under-test")
    deployment = "pipeline/nightly-under-test"

    stream(served, [encoded(p, ImageOps.invert) for p in unseen(digits, "0123456789", 4)])
    state = monitor(dataset_manifest=str(manifest), deployment=deployment, return_state=True)
    result = state.result()
    assert result.verdict == DRIFTED and "drifted" in result.retrain_reason
    assert result.pipeline_run_id is not None
    report = artifacts(state.state_details.flow_run_id)["drift-report"]
    assert report.startswith(f"# Drift watch: {DRIFTED}") and result.pipeline_run_id in report
    # The started run waits (no worker here): drift seen again does not start a second one.
    assert start_pipeline(deployment) == (
        None,
        f"not started: run {result.pipeline_run_id} of {deployment} is not finished yet",
    )
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(result.pipeline_run_id)
    assert run.deployment_id == deployment_id and "ursa-monitor" in run.tags
    logged = mlflow.MlflowClient(settings.tracking_uri).get_run(result.mlflow_run_id)
    assert logged.data.tags["ursa.verdict"] == DRIFTED
    assert logged.data.tags["ursa.retrain"] == result.retrain_reason

    stream(served, [encoded(p) for p in unseen(digits, "0123456789", 8)])
    result = monitor(dataset_manifest=str(manifest), deployment=deployment)
    assert result.verdict == STABLE and result.retrain_reason == "", result
    assert result.pipeline_run_id is None


def test_enough_accepted_feedback_asks_for_a_retrain(tmp_path: Path) -> None:
    sha = [f"{i:064x}" for i in range(3)]
    for s in sha:
        record_addition(ledger_path(tmp_path), "dana", s, "3", ["3"])
    in_dataset = tmp_path / "datasets" / "dataset.csv"
    row = ImageRow(sha[0], "", "3", "", 8, 8, "", "", "", source="feedback")
    write_rows(in_dataset, [row], ImageRow)
    waiting = accepted_waiting(tmp_path, in_dataset)
    assert waiting == 2  # the third is in the dataset already
    calm = Drift(STABLE, [], 100, 100)
    assert retrain_reason(calm, waiting, min_accepted_feedback=3) == ""
    assert "2 accepted feedback images" in retrain_reason(calm, waiting, min_accepted_feedback=2)
    assert retrain_reason(calm, waiting, min_accepted_feedback=0) == ""
