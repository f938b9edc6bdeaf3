"""Release gate, `previous` alias and rollback: the plain functions against a real SQLite
registry, and the release/rollback flows under Prefect's harness against a real server.

The models always answer one class (zero-weight head, one-hot bias), and the validation split
is skewed (classes 0 and 2 have two images, class 1 one), so every accuracy is known exactly:
always-0 and always-2 score 0.4, always-1 scores 0.2.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from flows.release import release
from flows.rollback import rollback
from serving.app import create_app
from tasks.deploy import Aliases, DeployError, aliases_before, redeploy, redeploy_or_put_back
from tasks.manifest import Dataset, ImageRow, read_rows, write_dataset
from tasks.registry import (
    ReleaseResult,
    RollbackError,
    RollbackResult,
    release_model,
    rollback_model,
)
from tasks.reports import release_note
from tests.datasets import digits_dataset
from tests.live import LiveServer
from ursa.package import PackageError, log_package, resolve_models_uri
from ursa.settings import Settings

TOKEN = "release-token"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (9, 9, 9)).save(buffer, "PNG")
    return buffer.getvalue()


def skewed_dataset(data_dir: Path) -> Dataset:
    full = digits_dataset(data_dir, per_class=8, classes=3)
    rows = read_rows(Path(full.manifest_path), ImageRow)
    dropped = next(r for r in rows if r.split == "valid" and r.label == full.classes[1])
    return write_dataset(data_dir, [r for r in rows if r is not dropped])


def always(index: int, classes: list[str]) -> nn.Module:
    head = nn.Linear(4, len(classes))
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[index] = 5.0
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head
    )


class FailsOnBlank(nn.Module):
    """Scales each image by its own spread: fine on real pictures, NaN on a blank one.

    The gate scores it on real images and promotes it; the server's warm-up on a blank image
    then refuses it, which is the one refusal a release can meet after its gate.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x / x.flatten(1).std(dim=1).view(-1, 1, 1, 1))


def log_models(settings: Settings, classes: list[str], names: list[str]) -> dict[str, str]:
    """Log one always-<class> package per name ("c0", "c1", ...; "b0": c0 failing on blanks)."""
    mlflow.set_tracking_uri(settings.tracking_uri)
    experiment = mlflow.create_experiment(
        "release-test", artifact_location=settings.artifact_location
    )
    uris = {}
    for name in names:
        with mlflow.start_run(experiment_id=experiment):
            meta = {"arch": "tiny", "classes": classes, "image_size": 16}
            meta |= {"mean": [0.5] * 3, "std": [0.25] * 3}
            model = always(int(name[1]), classes)
            model = FailsOnBlank(model) if name.startswith("b") else model
            uris[name] = log_package(model, meta, name="model")
    return uris


def corrupt(settings: Settings, version: str) -> None:
    location = resolve_models_uri(f"models:/{settings.model_name}/{version}", settings.tracking_uri)
    local = Path(url2pathname(urlparse(location).path)) if "://" in location else Path(location)
    (local / "data" / "model.pt2").write_bytes(b"garbage" * 64)


def aliases(settings: Settings) -> dict[str, str]:
    model = MlflowClient(settings.tracking_uri).get_registered_model(settings.model_name)
    return {alias: str(version) for alias, version in model.aliases.items()}


def test_gate_margin_previous_and_rollback(data_dir: Path) -> None:
    settings = Settings.from_env()
    dataset = skewed_dataset(data_dir)
    classes = list(dataset.classes)
    uris = log_models(settings, classes, ["c1", "c0", "c2"])
    name, uri = settings.model_name, settings.tracking_uri
    client = MlflowClient(uri)

    first = release_model(uris["c1"], dataset, name, uri)
    assert first.promoted and first.reason == "no champion yet"
    assert first.candidate_accuracy == pytest.approx(0.2)
    assert aliases(settings) == {"champion": "1"}

    short = release_model(uris["c0"], dataset, name, uri, margin=0.3)  # 0.4 vs 0.2 + 0.3
    assert not short.promoted and short.champion_version == "1"
    assert (short.candidate_accuracy, short.previous_accuracy) == pytest.approx((0.4, 0.2))
    tags = client.get_model_version(name, short.candidate_version).tags
    assert tags["ursa.gate"] == "rejected"
    assert tags["ursa.gate_champion_version"] == "1"
    assert float(tags["ursa.gate_champion_accuracy"]) == pytest.approx(0.2)
    assert tags["ursa.gate_margin"] == "0.3"
    run_id = mlflow.models.get_model_info(uris["c0"]).run_id
    run = client.get_run(run_id)
    assert run.data.metrics["gate_candidate_accuracy"] == pytest.approx(0.4)
    assert run.data.metrics["gate_champion_accuracy"] == pytest.approx(0.2)
    gate = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="release_gate.json", tracking_uri=uri
            )
        ).read_text()
    )
    assert gate["promoted"] is False and gate["margin"] == 0.3

    promoted = release_model(uris["c0"], dataset, name, uri, margin=0.1)
    assert promoted.promoted and promoted.champion_version == "3"
    assert aliases(settings) == {"champion": "3", "previous": "1"}

    tie = release_model(uris["c2"], dataset, name, uri)  # 0.4 vs 0.4: a tie does not promote
    assert not tie.promoted and aliases(settings) == {"champion": "3", "previous": "1"}

    back = rollback_model(name, uri)
    assert (back.champion_version, back.replaced_version) == ("1", "3")
    assert aliases(settings) == {"champion": "1", "previous": "3"}
    assert "ursa.rolled_back_at" in client.get_model_version(name, "3").tags
    rollback_model(name, uri)  # rolling back a rollback returns to where it started
    assert aliases(settings) == {"champion": "3", "previous": "1"}

    # A validation split under the minimum promotes nothing, however the scores compare.
    few = release_model(uris["c0"], dataset, name, uri, margin=0.1, min_valid=dataset.n_valid + 1)
    assert not few.promoted and aliases(settings) == {"champion": "3", "previous": "1"}
    assert f"holds {dataset.n_valid} images, under the minimum" in few.reason
    assert few.reason in release_note(few, None)
    assert client.get_model_version(name, few.candidate_version).tags["ursa.gate"] == "rejected"

    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="margin"):
            release_model(uris["c0"], dataset, name, uri, margin=bad)


def test_gate_refuses_a_candidate_that_does_not_know_the_classes(data_dir: Path) -> None:
    settings = Settings.from_env()
    dataset = skewed_dataset(data_dir)
    uris = log_models(settings, ["x", "y", "z"], ["c0"])
    with pytest.raises(ValueError, match="does not know the dataset's classes"):
        release_model(uris["c0"], dataset, settings.model_name, settings.tracking_uri)
    assert MlflowClient(settings.tracking_uri).search_model_versions() == []


def test_release_registers_in_the_store_it_is_given_and_leaves_mlflow_pointed_elsewhere(
    data_dir: Path, tmp_path: Path
) -> None:
    settings = Settings.from_env()
    dataset = skewed_dataset(data_dir)
    uris = log_models(settings, list(dataset.classes), ["c0"])
    elsewhere = tmp_path / "elsewhere.db"
    mlflow.set_tracking_uri(f"sqlite:///{elsewhere}")  # where an earlier run left MLflow
    released = release_model(uris["c0"], dataset, settings.model_name, settings.tracking_uri)
    assert mlflow.get_tracking_uri() == f"sqlite:///{elsewhere}"
    assert not elsewhere.exists(), "nothing was looked up in the process-wide store"

    client = MlflowClient(settings.tracking_uri)
    version = client.get_model_version(settings.model_name, released.candidate_version)
    logged = client.get_logged_model(uris["c0"].removeprefix("models:/"))
    assert version.run_id == logged.source_run_id
    assert (
        client.get_model_version_download_uri(settings.model_name, "1") == logged.artifact_location
    )
    listed = json.loads(logged.tags["mlflow.modelVersions"])
    assert [(v["name"], str(v["version"])) for v in listed] == [(settings.model_name, "1")]
    assert client.get_run(logged.source_run_id).data.tags["ursa.gate"] == "promoted"


def test_the_aliases_put_back_are_where_they_pointed_before_the_move() -> None:
    promoted = ReleaseResult("m", "3", 0.9, "3", "2", 0.8, True, "beats", 0.0, "1")
    assert aliases_before(promoted) == Aliases(champion="2", previous="1")
    kept = ReleaseResult("m", "3", 0.7, "2", "2", 0.8, False, "does not beat", 0.0, "1")
    assert aliases_before(kept) is None  # nothing moved: nothing to put back
    rolled_back = RollbackResult("m", champion_version="1", replaced_version="2")
    assert aliases_before(rolled_back) == Aliases(champion="2", previous="1")


def test_rollback_without_previous_is_a_clear_error(data_dir: Path) -> None:
    settings = Settings.from_env()
    dataset = skewed_dataset(data_dir)
    uris = log_models(settings, list(dataset.classes), ["c0"])
    release_model(uris["c0"], dataset, settings.model_name, settings.tracking_uri)
    with pytest.raises(RollbackError, match="previous"):
        rollback_model(settings.model_name, settings.tracking_uri)


@pytest.mark.usefixtures("prefect_harness")
def test_rollback_flow_redeploys_and_refuses_a_broken_previous(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("URSA_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("URSA_RELEASE_MIN_VALID", "0")  # 5 validation images: nothing would pass
    settings = Settings.from_env()
    dataset = skewed_dataset(data_dir)
    classes = list(dataset.classes)
    uris = log_models(settings, classes, ["c1", "c0", "c2"])
    name, uri = settings.model_name, settings.tracking_uri
    release_model(uris["c1"], dataset, name, uri)  # v1
    release_model(uris["c0"], dataset, name, uri)  # v2 beats it: champion 2, previous 1

    app = create_app(settings)
    with LiveServer(app) as server, server.client() as http:
        assert http.get("/version").json()["version"] == "2"
        done = rollback(serve_url=server.url)
        assert done.deploy.served_version == "1"
        assert aliases(settings) == {"champion": "1", "previous": "2"}
        answer = http.post("/predict?k=1", content=png(), headers={"content-type": "image/png"})
        assert answer.json()["version"] == "1"
        assert answer.json()["predictions"][0]["label"] == classes[1]

        # The release flow moves on to v3 (always-2 beats always-1) and redeploys.
        released = release(
            model_uri=uris["c2"], dataset_manifest=dataset.manifest_path, serve_url=server.url
        )
        assert released.release.promoted and released.deploy.served_version == "3"
        assert aliases(settings) == {"champion": "3", "previous": "1"}

        corrupt(settings, "1")  # `previous` breaks on disk
        with pytest.raises(DeployError, match="refused version 1") as caught:
            rollback(serve_url=server.url)
        assert caught.value.refused
        assert aliases(settings) == {"champion": "3", "previous": "1"}  # put back
        assert http.get("/readyz").json()["version"] == "3"

        # A broken candidate fails the release flow at the gate: nothing registered or moved.
        with pytest.raises(PackageError):
            release(
                model_uri=f"models:/{name}/1",
                dataset_manifest=dataset.manifest_path,
                serve_url=server.url,
            )
        assert len(MlflowClient(uri).search_model_versions(f"name='{name}'")) == 3
        assert http.get("/version").json()["version"] == "3"


def test_redeploy_against_a_server_that_is_down_is_not_a_refusal() -> None:
    with pytest.raises(DeployError, match="did not answer") as caught:
        redeploy("http://127.0.0.1:9", TOKEN, "1", timeout_s=2)
    assert not caught.value.refused


def admin_reloads(metrics: str) -> dict[str, float]:
    """The server's admin reloads so far, by outcome (refused, changed, unchanged, error)."""
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "ursa_model_reloads"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["trigger"] == "admin"
    }


def test_redeploy_or_put_back_restores_the_aliases_only_on_a_refusal(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("URSA_ADMIN_TOKEN", TOKEN)
    settings = Settings.from_env()
    dataset = skewed_dataset(data_dir)
    uris = log_models(settings, list(dataset.classes), ["c1", "c0"])
    name, uri = settings.model_name, settings.tracking_uri
    release_model(uris["c1"], dataset, name, uri)  # v1
    with LiveServer(create_app(settings)) as server, server.client() as http:
        release_model(uris["c0"], dataset, name, uri)  # v2: champion 2, previous 1
        corrupt(settings, "2")
        # A server that is down refused nothing: the aliases stay where the release put them.
        with pytest.raises(DeployError, match="did not answer") as down:
            redeploy_or_put_back("http://127.0.0.1:9", TOKEN, "2", name, uri, Aliases("1", ""))
        assert not down.value.refused
        assert aliases(settings) == {"champion": "2", "previous": "1"}
        # Nothing to put back: the refusal is raised and the aliases are left alone.
        with pytest.raises(DeployError, match="refused version 2"):
            redeploy_or_put_back(server.url, TOKEN, "2", name, uri, None)
        assert aliases(settings) == {"champion": "2", "previous": "1"}

        with pytest.raises(DeployError, match="back on '1'") as refused:
            redeploy_or_put_back(server.url, TOKEN, "2", name, uri, Aliases("1", ""))
        assert refused.value.refused
        assert aliases(settings) == {"champion": "1"}  # `previous` did not exist before
        assert http.get("/version").json()["version"] == "1"


@pytest.mark.usefixtures("prefect_harness")
def test_release_flow_puts_the_aliases_back_when_the_server_refuses(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("URSA_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("URSA_RELEASE_MIN_VALID", "0")  # a 10-image validation split
    settings = Settings.from_env()
    dataset = skewed_dataset(data_dir)
    classes = list(dataset.classes)
    uris = log_models(settings, classes, ["c1", "b0"])
    name, uri = settings.model_name, settings.tracking_uri
    release_model(uris["c1"], dataset, name, uri)  # v1, served below
    with LiveServer(create_app(settings)) as server, server.client() as http:
        with pytest.raises(DeployError) as caught:
            release(
                model_uri=uris["b0"], dataset_manifest=dataset.manifest_path, serve_url=server.url
            )
        # A refusal is final: the redeploy task did not ask again (a retry would have been
        # counted, whatever the server then answered).
        assert admin_reloads(http.get("/metrics").text) == {"refused": 1}
        caught.match("refused version 2.*back on '1'")
        assert caught.value.refused
        # The gate promoted it (always-0 scores 0.4 against 0.2); the refusal undid that.
        versions = MlflowClient(uri).search_model_versions(f"name='{name}'")
        assert {str(v.version): v.tags["ursa.gate"] for v in versions} == {
            "1": "promoted",
            "2": "promoted",
        }
        assert aliases(settings) == {"champion": "1"}
        assert http.get("/readyz").json()["version"] == "1"
        answer = http.post("/predict?k=1", content=png(), headers={"content-type": "image/png"})
        assert answer.json()["predictions"][0]["label"] == classes[1]
