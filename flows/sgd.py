"""sgd_from_scratch: lesson2-sgd as a flow — one line, several learning rates, each an MLflow
child run with its loss per step, a GIF of the line, and the fit diagnosis."""

from __future__ import annotations

from prefect import flow

from tasks.reports import publish_sgd
from tasks.sgd import finish_sgd_task, sgd_task, start_sgd_task
from tasks.tracking import experiment_id
from ursa.settings import Settings

DEFAULT_SGD_LRS = [0.01, 0.1, 1.1]


@flow(name="sgd_from_scratch", log_prints=True)
def sgd_from_scratch(
    lrs: list[float] = DEFAULT_SGD_LRS,
    steps: int = 100,
    batch_size: int = 20,
    n: int = 100,
    seed: int = 0,
) -> list[dict]:
    """Fit y = 3x + 2 + noise by hand-written mini-batch SGD at each learning rate."""
    settings = Settings.from_env()
    experiment = experiment_id(settings)
    parent = start_sgd_task(experiment, lrs, steps, batch_size, n)
    futures = [sgd_task.submit(lr, steps, batch_size, n, seed, experiment, parent) for lr in lrs]
    runs = [f.result() for f in futures]
    rows = finish_sgd_task(parent, runs, n, seed)
    publish_sgd(rows, parent)
    for r in rows:
        print(
            f"sgd: lr={r['lr']:g} y={r['slope']:.3f}x+{r['intercept']:.3f} "
            f"loss={r['final_loss']:.4g} {r['diagnosis']} ({r['evidence']})"
        )
    return rows
