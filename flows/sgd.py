"""sgd_from_scratch: lesson2-sgd as a flow — one line, several learning rates, each an MLflow
child run with its loss per step, a GIF of the line, and the fit diagnosis."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.policies import HOUR
from tasks.reports import publish_sgd
from tasks.sgd import finish_sgd_task, sgd_task, start_sgd_task
from tasks.tracking import experiment_id
from ursa.settings import Settings

DEFAULT_SGD_LRS = [0.01, 0.1, 1.1]


@flow(name="sgd_from_scratch", log_prints=True, timeout_seconds=HOUR)
def sgd_from_scratch(
    lrs: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = DEFAULT_SGD_LRS,
    steps: Annotated[int, Field(ge=1, le=100_000)] = 100,
    batch_size: Annotated[int, Field(ge=1)] = 20,
    n: Annotated[int, Field(ge=2)] = 100,
    seed: Annotated[int, Field(ge=0)] = 0,
) -> list[dict]:
    """Fit y = 3x + 2 + noise by hand-written mini-batch SGD at each learning rate.

    Args:
        lrs: Learning rates, one MLflow child run each.
        steps: SGD steps per learning rate.
        batch_size: Points per mini-batch.
        n: Points in the data set.
        seed: Seed of the data and the batches.
    """
    settings = Settings.from_env()
    experiment, uri = experiment_id(settings), settings.tracking_uri
    parent = start_sgd_task(experiment, lrs, steps, batch_size, n, uri)
    futures = [
        sgd_task.submit(lr, steps, batch_size, n, seed, experiment, parent, uri) for lr in lrs
    ]
    runs = [f.result() for f in futures]
    rows = finish_sgd_task(parent, runs, n, seed, uri)
    publish_sgd(rows, parent)
    for r in rows:
        print(
            f"sgd: lr={r['lr']:g} y={r['slope']:.3f}x+{r['intercept']:.3f} "
            f"loss={r['final_loss']:.4g} {r['diagnosis']} ({r['evidence']})"
        )
    return rows
