"""The demo: the whole lesson-2 path on the embedded default, end to end, over real HTTP.

Starts the model server (no model yet), runs the ``pipeline`` flow against the local image
host, which registers a champion and tells the server to load it, then sends a real image
to ``/predict`` and prints what happened at every step.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from app.processes import stop, wait_until_healthy
from ursa.settings import Settings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def server_process(settings: Settings, startup_s: float = 120.0) -> Iterator[str]:
    """Run ``ursa serve`` in a child process; yields its base URL once /healthz answers."""
    url = f"http://{settings.serve_host}:{settings.serve_port}"
    env = {
        **os.environ,
        "URSA_DATA_DIR": str(settings.data_dir),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "URSA_MODEL_NAME": settings.model_name,
        "URSA_ADMIN_TOKEN": settings.admin_token,
        "URSA_SERVE_HOST": settings.serve_host,
        "URSA_SERVE_PORT": str(settings.serve_port),
        "URSA_REQUEST_TIMEOUT_S": str(settings.request_timeout_s),
        "URSA_HEALTH_PORT": str(settings.health_port),
    }
    if settings.max_queue is not None:  # unset: the server sizes its queue itself
        env["URSA_MAX_QUEUE"] = str(settings.max_queue)
    log = settings.data_dir / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_healthy(proc, f"{url}/healthz", "The model server", log, startup_s)
        yield url
    finally:
        stop(proc)


def run_demo(settings: Settings, console: Console | None = None) -> dict:
    """Run the demo; print its report; return the prediction the server gave."""
    from flows.pipeline import pipeline
    from tasks.manifest import ImageRow, read_rows

    console = console or Console()
    started = time.monotonic()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.admin_token:
        settings = replace(settings, admin_token=secrets.token_urlsafe(16))
    settings = replace(settings, serve_port=free_port(settings.serve_host))
    # The flows read their settings from the environment: hand them the demo's.
    os.environ["URSA_DATA_DIR"] = str(settings.data_dir)
    os.environ["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    os.environ["URSA_ADMIN_TOKEN"] = settings.admin_token

    with server_process(settings) as url:
        console.print(f"[bold]Server[/bold] up at {url} (no champion loaded yet, or the last one)")
        result = pipeline(serve_url=url)
        dataset = result.ingest.dataset
        sample = next(
            r
            for r in read_rows(Path(dataset.manifest_path), ImageRow)
            if r.status == "kept" and r.split == "valid"
        )
        image = settings.data_dir / sample.image_path
        reply = httpx.post(
            f"{url}/predict",
            files={"file": (image.name, image.read_bytes(), "image/png")},
            timeout=30,
        )
        reply.raise_for_status()
        prediction = reply.json()

    print_report(console, result, sample, prediction, time.monotonic() - started, settings)
    return prediction


def print_report(
    console: Console, result, sample, prediction: dict, seconds: float, settings
) -> None:
    ingest, train, release = result.ingest, result.train, result.release.release
    outcomes = ingest.outcomes
    downloaded = sum(
        v for k, v in outcomes.items() if k in ("ok", "corrupt", "too_many_pixels", "too_small")
    )
    table = Table(title="Ingest", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("URLs in", str(sum(outcomes.values())))
    table.add_row("downloaded", str(downloaded))
    for outcome, count in outcomes.items():
        if outcome != "ok":
            table.add_row(f"  rejected: {outcome}", str(count))
    for status, count in ingest.statuses.items():
        label = "images kept" if status == "kept" else f"  removed: {status}"
        table.add_row(label, str(count))
    table.add_row("train / valid", f"{ingest.dataset.n_train} / {ingest.dataset.n_valid}")
    console.print(table)

    trials = Table(title=f"Sweep (MLflow parent run {train.parent_run_id})")
    for col in (
        "lr",
        "epochs",
        "val_accuracy",
        "val_loss",
        "train_loss",
        "seconds",
        "diagnosis",
        "",
    ):
        trials.add_column(col, justify="right")
    for t in sorted(train.trials, key=lambda t: (t.lr, t.epochs)):
        best = "best" if t.run_id == train.best.run_id else ""
        trials.add_row(
            f"{t.lr:g}",
            str(t.epochs),
            f"{t.val_accuracy:.4f}",
            f"{t.val_loss:.4f}",
            f"{t.train_loss:.4f}",
            f"{t.seconds:.1f}",
            t.diagnosis,
            best,
        )
    console.print(trials)

    served = result.release.deploy.served_version if result.release.deploy else "-"
    console.print(
        f"[bold]Registered[/bold] {release.model_name} version {release.candidate_version} "
        f"(accuracy {release.candidate_accuracy:.4f}); gate: "
        f"{'promoted' if release.promoted else 'not promoted'} - {release.reason}"
    )
    console.print(
        f"[bold]Champion[/bold] version {release.champion_version}; "
        f"[bold]served[/bold] version {served}"
    )
    top = prediction["predictions"][0]
    console.print(
        f"[bold]Prediction[/bold] for {sample.image_path} (true label {sample.label}): "
        f"{top['label']} with p={top['probability']:.3f} "
        f"from {prediction['model']} v{prediction['version']}"
    )
    console.print(
        f"Done in {seconds:.0f} s. Browse the runs: "
        f"mlflow ui --backend-store-uri {settings.tracking_uri}"
    )
