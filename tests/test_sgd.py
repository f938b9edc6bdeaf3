"""SGD from scratch (lesson2-sgd): the hand-written loop, and the flow against real MLflow
under Prefect's test harness."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient

from flows.sgd import sgd_from_scratch
from tasks.sgd import line_data, sgd
from ursa.settings import Settings


def test_lr_0_1_for_100_steps_fits_the_line_below_0_1() -> None:
    x, y = line_data(100, seed=0)
    run = sgd(x, y, lr=0.1, steps=100)
    assert len(run.losses) == 101 and run.losses[0] > 1.0
    assert run.final_loss < 0.1
    a, b = run.params[-1]
    assert abs(a - 3) < 0.2 and abs(b - 2) < 0.2
    assert run.diagnosis == "good"


def test_a_too_high_rate_diverges_and_is_diagnosed_so() -> None:
    x, y = line_data(100, seed=0)
    run = sgd(x, y, lr=1.1, steps=100)
    assert run.final_loss > run.losses[0] or not math.isfinite(run.final_loss)
    assert run.diagnosis == "diverged", run.evidence
    with pytest.raises(ValueError, match="-1"):
        sgd(x, y, lr=-1)


@pytest.mark.usefixtures("prefect_harness")
def test_flow_logs_a_child_run_per_rate_with_loss_per_step_and_pictures(data_dir) -> None:
    rows = sgd_from_scratch(lrs=[0.1, 1.1], steps=100, batch_size=20)
    by_lr = {r["lr"]: r for r in rows}
    assert by_lr[0.1]["final_loss"] < 0.1 and by_lr[0.1]["diagnosis"] == "good"
    assert by_lr[1.1]["diagnosis"] == "diverged"

    settings = Settings.from_env()
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(by_lr[0.1]["mlflow_run"])
    parent = run.data.tags["mlflow.parentRunId"]
    assert "fitted_lines.png" in [a.path for a in client.list_artifacts(parent)]
    for r in rows:
        child = client.get_run(r["mlflow_run"])
        assert child.data.tags["mlflow.parentRunId"] == parent
        assert child.data.tags["ursa.diagnosis"] == r["diagnosis"]
        assert "line.gif" in [a.path for a in client.list_artifacts(r["mlflow_run"])]
    steps = client.get_metric_history(by_lr[0.1]["mlflow_run"], "loss")
    assert [m.step for m in steps] == list(range(101))
    assert steps[-1].value == pytest.approx(by_lr[0.1]["final_loss"])
