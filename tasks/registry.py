"""Release: register a candidate in the MLflow Model Registry and move ``champion`` to it only
when it beats the current champion on the same validation data.

Both models are scored by :func:`validation_accuracy` through the model package reader, the
very code path the server uses, on the validation split of one dataset manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image
from prefect import task
from prefect.cache_policies import NONE

from tasks.manifest import Dataset, ImageRow, read_rows
from ursa.package import load_package

CHAMPION = "champion"
PREVIOUS = "previous"


@dataclass
class ReleaseResult:
    model_name: str
    candidate_version: str
    candidate_accuracy: float
    champion_version: str  # the champion after the release
    previous_version: str  # the champion before it ("" if none)
    previous_accuracy: float | None
    promoted: bool
    reason: str


def validation_accuracy(model_uri: str, dataset: Dataset, tracking_uri: str) -> float:
    """Accuracy of the package at ``model_uri`` on the dataset's validation split."""
    package = load_package(model_uri, tracking_uri)
    rows = [
        r
        for r in read_rows(Path(dataset.manifest_path), ImageRow)
        if r.status == "kept" and r.split == "valid"
    ]
    if not rows:
        raise ValueError(f"Dataset '{dataset.manifest_path}' has no validation images.")
    classes = package.classes
    correct = 0
    for start in range(0, len(rows), 128):
        chunk = rows[start : start + 128]
        images = [Image.open(dataset.data_dir / r.image_path).convert("RGB") for r in chunk]
        predicted = package.probabilities(images).argmax(axis=1)
        correct += sum(classes[p] == r.label for p, r in zip(predicted, chunk, strict=True))
    return correct / len(rows)


def current_champion(client: MlflowClient, name: str) -> str:
    """The champion's version number, or "" when there is none yet."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return ""


def release_model(
    model_uri: str,
    dataset: Dataset,
    model_name: str,
    tracking_uri: str,
    margin: float = 0.0,
) -> ReleaseResult:
    """Register ``model_uri`` as a new version; promote it if it beats the champion by margin."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    candidate_accuracy = validation_accuracy(model_uri, dataset, tracking_uri)
    version = str(mlflow.register_model(model_uri, model_name).version)
    champion = current_champion(client, model_name)

    champion_accuracy: float | None = None
    if not champion:
        promoted, reason = True, "no champion yet"
    else:
        try:
            champion_accuracy = validation_accuracy(
                f"models:/{model_name}/{champion}", dataset, tracking_uri
            )
        except Exception as exc:  # an unloadable champion, or one trained on other classes
            promoted, reason = True, f"champion v{champion} could not be scored: {exc}"
        else:
            promoted = candidate_accuracy > champion_accuracy + margin
            verdict = "beats" if promoted else "does not beat"
            reason = (
                f"candidate {candidate_accuracy:.4f} {verdict} champion v{champion} "
                f"{champion_accuracy:.4f} + margin {margin}"
            )

    tags = {
        "ursa.dataset_digest": dataset.digest,
        "ursa.val_accuracy": f"{candidate_accuracy:.6f}",
        "ursa.gate": "promoted" if promoted else "rejected",
        "ursa.gate_reason": reason,
    }
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    if promoted:
        if champion:
            client.set_registered_model_alias(model_name, PREVIOUS, champion)
        client.set_registered_model_alias(model_name, CHAMPION, version)

    result = ReleaseResult(
        model_name=model_name,
        candidate_version=version,
        candidate_accuracy=candidate_accuracy,
        champion_version=version if promoted else champion,
        previous_version=champion,
        previous_accuracy=champion_accuracy,
        promoted=promoted,
        reason=reason,
    )
    _log_gate(model_uri, result)
    return result


def _log_gate(model_uri: str, result: ReleaseResult) -> None:
    """Record the comparison on the run that produced the candidate."""
    run_id = mlflow.models.get_model_info(model_uri).run_id
    if run_id:
        with mlflow.start_run(run_id=run_id):
            mlflow.log_dict(asdict(result), "release_gate.json")
            mlflow.set_tag("ursa.gate", "promoted" if result.promoted else "rejected")


release_task = task(name="register-and-gate", cache_policy=NONE)(release_model)
