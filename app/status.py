"""``ursa status``: where things stand, on one screen — the data folder, the current dataset,
the last sweep, the registered versions with their aliases and gate results, the served
version and the local stack. Read-only: it creates no MLflow store and starts no server."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from ursa.layout import Layout
from ursa.settings import Settings


def has_mlflow_store(settings: Settings) -> bool:
    """False for a SQLite store whose file does not exist yet (opening it would create it)."""
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file()
    return True


def status(settings: Settings) -> dict[str, Any]:
    """Everything ``ursa status`` shows, as plain data (its ``--json``)."""
    from app.stack import running_stack

    stack = running_stack(settings.data_dir)
    report: dict[str, Any] = {
        "data_dir": str(settings.data_dir),
        "data_dir_exists": settings.data_dir.is_dir(),
        "tracking_uri": settings.tracking_uri,
        "dataset": dataset_status(settings.data_dir),
        "last_sweep": None,
        "model_name": settings.model_name,
        "versions": [],
        "served": served_status(settings.serve_url),
        "stack": {"running": stack is not None, "urls": stack["urls"] if stack else {}},
    }
    if has_mlflow_store(settings):
        report["last_sweep"], report["versions"] = mlflow_status(settings)
    return report


def dataset_status(data_dir: Path) -> dict[str, Any] | None:
    """The current dataset: digest, images per class and split, the ledger it applied."""
    from tasks.manifest import ImageRow, load_dataset, read_rows

    manifest = Layout(data_dir).dataset_manifest()
    if not manifest.with_suffix(".json").is_file():
        return None
    dataset = load_dataset(manifest)
    kept = Counter((r.label, r.split) for r in read_rows(manifest, ImageRow) if r.status == "kept")
    return {
        "manifest": str(manifest),
        "digest": dataset.digest,
        "classes": list(dataset.classes),
        "n_train": dataset.n_train,
        "n_valid": dataset.n_valid,
        "images": {
            label: {"train": kept[label, "train"], "valid": kept[label, "valid"]}
            for label in dataset.classes
        },
        "ledger": {"path": dataset.ledger_path, "digest": dataset.ledger_digest}
        if dataset.ledger_digest
        else None,
    }


def mlflow_status(settings: Settings) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The last sweep of the experiment and the registered versions of the model."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tasks.diagnosis import DIAGNOSIS_TAG

    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    sweep = None
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string="tags.`ursa.role` = 'sweep'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            run = runs[0]
            tags = run.data.tags
            best = tags.get("ursa.best_run_id", "")
            sweep = {
                "run_id": run.info.run_id,
                "started": _when(run.info.start_time),
                "state": run.info.status,
                "best_trial": tags.get("ursa.best_trial", ""),
                "best_val_accuracy": run.data.metrics.get("best_val_accuracy"),
                "diagnosis": client.get_run(best).data.tags.get(DIAGNOSIS_TAG, "") if best else "",
                "excluded": tags.get("ursa.excluded", ""),
                "model_uri": tags.get("ursa.model_uri", ""),
            }
    try:
        found = client.search_model_versions(f"name = '{settings.model_name}'")
        # The registered model holds the aliases; search results may leave them out.
        aliases = client.get_registered_model(settings.model_name).aliases if found else {}
    except MlflowException:
        found, aliases = [], {}
    versions = [
        {
            "version": str(v.version),
            "aliases": sorted(a for a, n in aliases.items() if str(n) == str(v.version)),
            "registered": _when(v.creation_timestamp),
            "val_accuracy": v.tags.get("ursa.val_accuracy", ""),
            "gate": v.tags.get("ursa.gate", ""),
            "gate_reason": v.tags.get("ursa.gate_reason", ""),
        }
        for v in sorted(found, key=lambda v: int(v.version), reverse=True)
    ]
    return sweep, versions


def served_status(serve_url: str) -> dict[str, Any] | None:
    """What the server at ``serve_url`` says it serves; None when no URL is configured."""
    if not serve_url:
        return None
    import httpx

    try:
        reply = httpx.get(f"{serve_url}/version", timeout=2.0)
    except httpx.HTTPError as exc:
        return {"url": serve_url, "version": "", "error": f"no answer ({type(exc).__name__})"}
    if reply.status_code != 200:
        return {"url": serve_url, "version": "", "error": f"HTTP {reply.status_code}"}
    return {"url": serve_url, "version": str(reply.json().get("version", "")), "error": ""}


def _when(millis: int | None) -> str:
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


def print_status(report: dict[str, Any], console: Console) -> None:
    """The report for a person: one section per question, with the next step where empty."""
    console = Console(soft_wrap=True, highlight=False, file=console.file)  # a line per fact
    console.print(f"[bold]Data folder[/bold]  {report['data_dir']}")
    if not report["data_dir_exists"]:
        console.print("  (does not exist yet: 'ursa ingest SOURCE' creates it)")
    d = report["dataset"]
    if d is None:
        console.print("[bold]Dataset[/bold]      none yet: run 'ursa ingest SOURCE'")
    else:
        console.print(
            f"[bold]Dataset[/bold]      {d['digest'][:12]}  {len(d['classes'])} classes, "
            f"{d['n_train']} train / {d['n_valid']} valid images  ({d['manifest']})"
        )
        for label, n in d["images"].items():
            console.print(f"  {label:<20} {n['train']:>6} train {n['valid']:>6} valid")
        ledger = d["ledger"]
        console.print(
            f"  ledger: {ledger['path']} (digest {ledger['digest'][:12]})"
            if ledger
            else "  ledger: none applied"
        )
    console.print(f"[bold]MLflow[/bold]       {report['tracking_uri']}")
    s = report["last_sweep"]
    if s is None:
        console.print("[bold]Last sweep[/bold]   none yet: run 'ursa train'")
    else:
        accuracy = s["best_val_accuracy"]
        best = (
            f"best {s['best_trial']}, val_accuracy {accuracy:.4f} ({s['diagnosis'] or '-'})"
            if s["best_trial"] and accuracy is not None
            else f"no best trial ({s['state']})"
        )
        console.print(f"[bold]Last sweep[/bold]   {s['started']}  {best}")
        if s["excluded"] and s["excluded"] != "none":
            console.print(f"  excluded: {s['excluded']}")
    if not report["versions"]:
        console.print(f"[bold]Model[/bold]        {report['model_name']}: no version registered")
    else:
        console.print(f"[bold]Model[/bold]        {report['model_name']}")
        for v in report["versions"]:
            aliases = f"@{', @'.join(v['aliases'])}" if v["aliases"] else ""
            console.print(
                f"  v{v['version']:<4} {aliases:<22} {v['gate'] or '-':<9} {v['gate_reason']}",
                highlight=False,
            )
    served = report["served"]
    if served is None:
        console.print("[bold]Served[/bold]       no server configured (URSA_SERVE_URL)")
    elif served["error"]:
        console.print(f"[bold]Served[/bold]       {served['url']}: {served['error']}")
    else:
        console.print(f"[bold]Served[/bold]       v{served['version']} at {served['url']}")
    stack = report["stack"]
    if not stack["running"]:
        console.print("[bold]ursa up[/bold]      not running")
    else:
        console.print("[bold]ursa up[/bold]      running")
        for name, url in stack["urls"].items():
            console.print(f"  {name:<12} {url}")
