"""The flows under Prefect's test harness, against the real image host, MLflow store and server.

The end-to-end test runs the whole pipeline on the embedded default and queries the real
server over HTTP: the server starts with no model, the release flow tells it to load the
champion, and /predict answers with that version.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.ingest import ingest
from flows.pipeline import pipeline
from flows.release import release
from serving.app import create_app
from tasks.deploy import DeployError
from tasks.manifest import ImageRow, UrlRow, read_rows
from tests.live import LiveServer
from tests.runs import artifacts, task_runs
from ursa.settings import Settings

pytestmark = pytest.mark.usefixtures("prefect_harness")
TOKEN = "flow-test-token"


def test_ingest_flow_records_every_url_and_builds_a_split_dataset(data_dir: Path) -> None:
    state = ingest(source="embedded", max_per_class=8, timeout_s=3.0, return_state=True)
    result = state.result()
    urls = read_rows(Path(result.url_manifest), UrlRow)
    lists = sorted((data_dir / "urls").glob("*.txt"))
    listed = sum(1 for f in lists for line in f.read_text().splitlines() if line.strip())
    assert len(urls) == listed == sum(result.outcomes.values())
    assert all(u.outcome for u in urls), "every URL ends with an outcome"
    for outcome in (
        "ok",
        "http_error",
        "timeout",
        "not_image",
        "empty",
        "duplicate_url",
        "corrupt",
    ):
        assert result.outcomes.get(outcome, 0) >= 1, outcome

    images = read_rows(Path(result.dataset.manifest_path), ImageRow)
    kept = [r for r in images if r.status == "kept"]
    assert {r.split for r in kept} == {"train", "valid"}
    assert result.statuses.get("near_duplicate", 0) >= 1
    assert result.statuses.get("label_conflict", 0) >= 2
    groups = {}
    for r in images:
        if r.status in ("kept", "duplicate", "near_duplicate"):
            groups.setdefault(r.group, set()).add(r.split or "removed")
    assert all(len(s - {"removed"}) <= 1 for s in groups.values()), "a group straddles the split"
    published = artifacts(state.state_details.flow_run_id)
    assert {"ingest-outcomes", "ingest-summary"} <= set(published)

    again = ingest(source="embedded", max_per_class=8, timeout_s=3.0)
    assert again.dataset.digest == result.dataset.digest


def test_pipeline_end_to_end_serves_the_new_champion(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("URSA_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("URSA_MLFLOW_UI_URL", "http://mlflow.example:5000")
    settings = Settings.from_env()
    with LiveServer(create_app(settings)) as server, server.client() as http:
        assert http.get("/readyz").status_code == 503  # nothing registered yet

        state = pipeline(
            source="embedded",
            max_per_class=15,
            lrs=[3e-3],
            epochs=[1, 2],
            image_size=16,
            serve_url=server.url,
            return_state=True,
        )
        result = state.result()
        released = result.release.release
        assert released.promoted and released.champion_version == "1"
        assert result.release.deploy.served_version == "1"

        sample = next(
            r
            for r in read_rows(Path(result.ingest.dataset.manifest_path), ImageRow)
            if r.status == "kept" and r.split == "valid"
        )
        image = (data_dir / sample.image_path).read_bytes()
        reply = http.post("/predict", files={"file": ("x.png", image, "image/png")})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["version"] == "1" and body["model"] == settings.model_name
        assert body["predictions"][0]["label"] in result.ingest.dataset.classes

        # The same model again does not beat itself: the champion stays, the server too.
        again = release(
            model_uri=result.train.model_uri,
            dataset_manifest=result.ingest.dataset.manifest_path,
            serve_url=server.url,
        )
        assert not again.release.promoted
        assert again.release.candidate_version == "2"
        assert again.deploy.served_version == "1"
        assert http.get("/version").json()["version"] == "1"

    client = MlflowClient(settings.tracking_uri)
    parent = client.get_run(result.train.parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert len(children) == 2
    history = client.get_metric_history(result.train.best.run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(result.train.best.epochs))
    assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == "1"
    published = artifacts(state.state_details.flow_run_id)
    keys = ("ingest-outcomes", "ingest-summary", "sweep-leaderboard", "sweep-summary")
    for key in (*keys, "release-note", "pipeline-links"):
        assert key in published, (key, sorted(published))
    sweep, parent_id = published["sweep-summary"], parent.info.run_id
    assert f"- best: **{result.train.best.name}**" in sweep and f"`{parent_id}`" in sweep
    assert "## Excluded trials" in sweep
    links = published["pipeline-links"]
    ui = "http://mlflow.example:5000/#"
    assert f"({ui}/experiments/{parent.info.experiment_id}/runs/{parent_id})" in links
    assert f"({ui}/models/{settings.model_name}/versions/1)" in links
    assert f"- server: {server.url}" in links


def test_release_fails_after_two_retries_when_the_server_is_down_and_it_catches_up(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("URSA_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("URSA_RELEASE_MIN_VALID", "0")  # 6 images a class: a tiny valid split
    settings = Settings.from_env()
    state = pipeline(
        source="embedded",
        max_per_class=6,
        lrs=[3e-3],
        epochs=[1],
        image_size=16,
        serve_url="http://127.0.0.1:9",  # nothing listens on the discard port
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(DeployError, match="did not answer the reload") as caught:
        state.result()
    assert not caught.value.refused
    [redeploy] = task_runs(state.state_details.flow_run_id, "redeploy")
    assert redeploy.run_count == 3  # the first try and two retries
    assert "redeploy failed" in artifacts(state.state_details.flow_run_id)["release-note"]
    # The registry moved on (only a refusal puts the aliases back) ...
    client = MlflowClient(settings.tracking_uri)
    assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == "1"
    # ... so the server serves the new champion as soon as it is back.
    with LiveServer(create_app(settings)) as server, server.client() as http:
        assert http.get("/version").json()["version"] == "1"


def test_bad_url_source_names_the_path(data_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        ingest(source=str(data_dir / "no-such-folder"))


def test_a_sharded_ingest_without_the_shard_deployment_runs_its_shards_here(
    data_dir: Path,
) -> None:
    # The test server has no deployments: the shards run in this process, one after another,
    # each in its own folder, and merge into the dataset an unsharded ingest builds.
    one = ingest(source="embedded", max_per_class=8, timeout_s=3.0)
    two = ingest(source="embedded", max_per_class=8, timeout_s=3.0, shards=2)
    assert two.outcomes == one.outcomes
    assert two.dataset.digest == one.dataset.digest
    images = read_rows(Path(two.dataset.manifest_path), ImageRow)
    assert {"/".join(r.image_path.split("/")[:3]) for r in images} == {
        "shards/2/0",
        "shards/2/1",
    }
    assert all((data_dir / r.image_path).is_file() for r in images)
