"""Release: register a candidate in the MLflow Model Registry and move ``champion`` to it only
when it beats the current champion on the same validation data; roll back to ``previous``.

Both models are scored by :func:`validation_accuracy` through the model package reader, the
very code path the server uses, on the validation split of one dataset manifest. The
comparison is logged on the candidate's run (metrics and ``release_gate.json``) and as tags on
its model version, so the MLflow UI shows why each version was or was not promoted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.utils.models import get_model_name_and_version
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS as MODEL_VERSIONS
from PIL import Image
from prefect import task

from tasks.manifest import Dataset, ImageRow, read_rows
from tasks.policies import CPU, NETWORK
from ursa.package import load_package
from ursa.registry import ALREADY_EXISTS, CHAMPION, NOT_FOUND, PREVIOUS


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
    margin: float = 0.0
    prior_previous_version: str = ""  # what ``previous`` pointed at before ("" if nothing)


@dataclass
class RollbackResult:
    model_name: str
    champion_version: str  # the restored champion (the former ``previous``)
    replaced_version: str  # the champion that was rolled back (now ``previous``)

    def summary(self) -> str:
        return (
            f"# Rollback of {self.model_name}\n"
            f"- champion: version **{self.champion_version}** (restored from `previous`)\n"
            f"- rolled back: version {self.replaced_version} (now `previous`)\n"
        )


class RollbackError(LookupError):
    """There is nothing to roll back to."""


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
    unknown = sorted({r.label for r in rows} - set(classes))
    if unknown:  # scoring would count them wrong and call the model worse than it is
        raise ValueError(
            f"Model at '{model_uri}' does not know the dataset's classes {unknown} "
            f"(its classes: {classes})."
        )
    correct = 0
    for start in range(0, len(rows), 128):
        chunk = rows[start : start + 128]
        images = [Image.open(dataset.data_dir / r.image_path).convert("RGB") for r in chunk]
        predicted = package.probabilities(images).argmax(axis=1)
        correct += sum(classes[p] == r.label for p, r in zip(predicted, chunk, strict=True))
    return correct / len(rows)


def current_champion(client: MlflowClient, name: str) -> str:
    """The champion's version number, or "" when there is none yet."""
    return aliased_version(client, name, CHAMPION)


def aliased_version(client: MlflowClient, name: str, alias: str) -> str:
    """The version that ``name@alias`` points at, or "" when there is none."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND:
            return ""
        raise  # an unreachable registry is not "no champion": that would promote blindly


def registered_version(client: MlflowClient, model_uri: str, name: str) -> ModelVersion:
    """A new version of ``name`` for the package at ``model_uri``: ``models:/<model id>`` as
    the train flow prints it, or a registered ``models:/<name>/<version>`` (or ``@alias``).

    Through the client, not ``mlflow.register_model``: that works on the process-wide
    tracking URI, and so does MLflow's SQL registry when a version's source is a
    ``models:/<id>`` URI. So the version is given what that URI resolves to (the model's
    artifact location) and its lineage (run, logged model) explicitly.
    """
    if not model_uri.startswith("models:/"):
        raise ValueError(
            f"Cannot register '{model_uri}': give a models:/ URI, as the train flow prints it "
            f"(models:/m-<id>) or of a registered version (models:/<name>/<version>)."
        )
    found = get_model_name_and_version(client, model_uri)
    if len(found) == 1:  # models:/<logged model id>
        logged = client.get_logged_model(found[0])
        source, run_id, model_id = logged.artifact_location, logged.source_run_id, found[0]
    else:
        registered = client.get_model_version(*found)
        source = client.get_model_version_download_uri(*found)
        run_id, model_id = registered.run_id, registered.model_id
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ALREADY_EXISTS:
            raise
    version = client.create_model_version(name, source, run_id=run_id, model_id=model_id)
    if model_id:  # as mlflow.register_model does: the logged model lists its versions
        entry = {"name": version.name, "version": version.version}
        listed = json.loads(client.get_logged_model(model_id).tags.get(MODEL_VERSIONS, "[]"))
        if entry not in listed:
            client.set_logged_model_tags(model_id, {MODEL_VERSIONS: json.dumps([*listed, entry])})
    return version


def release_model(
    model_uri: str,
    dataset: Dataset,
    model_name: str,
    tracking_uri: str,
    margin: float = 0.0,
    min_valid: int = 0,
) -> ReleaseResult:
    """Register ``model_uri`` as a new version; promote it if it beats the champion by margin.

    A dataset with fewer than ``min_valid`` validation images promotes nothing: on a handful
    of images one prediction moves accuracy by whole points, so "beats the champion" would be
    noise. A candidate that does not load, or does not know the dataset's classes, fails
    here, before anything is registered.
    """
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"Release margin must be in [0, 1) (an accuracy gap); got {margin}.")
    if min_valid < 0:
        raise ValueError(f"min_valid is {min_valid}; expected a count >= 0.")
    client = MlflowClient(tracking_uri)
    candidate_accuracy = validation_accuracy(model_uri, dataset, tracking_uri)
    registered = registered_version(client, model_uri, model_name)
    version = str(registered.version)
    champion = current_champion(client, model_name)
    prior_previous = aliased_version(client, model_name, PREVIOUS)

    champion_accuracy: float | None = None
    if dataset.n_valid < min_valid:
        promoted, reason = (
            False,
            (
                f"the validation split holds {dataset.n_valid} images, under the minimum of "
                f"{min_valid} (URSA_RELEASE_MIN_VALID): too few to tell models apart"
            ),
        )
    elif not champion:
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
        "ursa.gate_margin": str(margin),
        "ursa.gate_champion_version": champion,
        "ursa.gate_champion_accuracy": (
            "" if champion_accuracy is None else f"{champion_accuracy:.6f}"
        ),
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
        margin=margin,
        prior_previous_version=prior_previous,
    )
    _log_gate(client, registered.run_id, result)
    return result


def _log_gate(client: MlflowClient, run_id: str | None, result: ReleaseResult) -> None:
    """Record the comparison on the run that produced the candidate.

    Through the client, not ``mlflow.start_run``: the candidate's run may be active in this
    thread (a flow that trains and releases) and must not be ended here.
    """
    if not run_id:
        return
    metrics = {"gate_candidate_accuracy": result.candidate_accuracy, "gate_margin": result.margin}
    if result.previous_accuracy is not None:
        metrics["gate_champion_accuracy"] = result.previous_accuracy
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.log_dict(run_id, asdict(result), "release_gate.json")
    client.set_tag(run_id, "ursa.gate", "promoted" if result.promoted else "rejected")


def rollback_model(model_name: str, tracking_uri: str) -> RollbackResult:
    """Make ``previous`` the champion again; the rolled-back champion becomes ``previous``.

    Rolling back twice therefore returns to where it started, which is what an operator who
    rolled back by mistake wants.
    """
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    champion = current_champion(client, model_name)
    previous = aliased_version(client, model_name, PREVIOUS)
    if not previous:
        raise RollbackError(f"No '{model_name}@{PREVIOUS}' to roll back to.")
    set_aliases(model_name, tracking_uri, champion=previous, previous=champion)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(model_name, previous, "ursa.restored_at", when)
    if champion:
        client.set_model_version_tag(model_name, champion, "ursa.rolled_back_at", when)
    return RollbackResult(model_name, champion_version=previous, replaced_version=champion)


def set_aliases(model_name: str, tracking_uri: str, champion: str, previous: str) -> None:
    """Point ``champion`` and ``previous`` at the given versions ("" removes the alias)."""
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    for alias, version in ((CHAMPION, champion), (PREVIOUS, previous)):
        if version:
            client.set_registered_model_alias(model_name, alias, version)
        elif aliased_version(client, model_name, alias):
            client.delete_registered_model_alias(model_name, alias)


# Registering is not idempotent (a retry would add a version), so the release is never
# retried; a rollback only moves aliases, so it rides out a registry hiccup.
release_task = task(name="register-and-gate", **CPU)(release_model)
rollback_task = task(name="rollback-aliases", **NETWORK)(rollback_model)
