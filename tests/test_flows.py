"""The flows under Prefect's test harness, against the real image host, MLflow store and server.

The end-to-end test runs the whole pipeline on the embedded default and queries the real
server over HTTP: the server starts with no model, the release flow tells it to load the
champion, and /predict answers with that version.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.ingest import ingest
from flows.pipeline import pipeline
from flows.release import release
from serving.app import create_app
from tasks.manifest import ImageRow, UrlRow, read_rows
from tests.live import LiveServer
from ursa.settings import Settings

pytestmark = pytest.mark.usefixtures("prefect_harness")
TOKEN = "flow-test-token"


async def _artifact_keys(keys: list[str]) -> set[str]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
        )
    return {a.key for a in found}


def test_ingest_flow_records_every_url_and_builds_a_split_dataset(data_dir: Path) -> None:
    result = ingest(source="embedded", max_per_class=8, timeout_s=3.0)
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
    assert asyncio.run(_artifact_keys(["ingest-outcomes", "ingest-summary"])) == {
        "ingest-outcomes",
        "ingest-summary",
    }

    again = ingest(source="embedded", max_per_class=8, timeout_s=3.0)
    assert again.dataset.digest == result.dataset.digest


def test_pipeline_end_to_end_serves_the_new_champion(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("URSA_ADMIN_TOKEN", TOKEN)
    settings = Settings.from_env()
    with LiveServer(create_app(settings)) as server, server.client() as http:
        assert http.get("/readyz").status_code == 503  # nothing registered yet

        result = pipeline(
            source="embedded",
            max_per_class=15,
            lrs=[3e-3],
            epochs=[1, 2],
            image_size=16,
            serve_url=server.url,
        )
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
    assert asyncio.run(_artifact_keys(["sweep-leaderboard", "release-note"])) == {
        "sweep-leaderboard",
        "release-note",
    }


def test_release_fails_loudly_when_the_server_does_not_follow(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("URSA_ADMIN_TOKEN", TOKEN)
    with pytest.raises(Exception, match="did not answer the reload|refused the reload"):
        pipeline(
            source="embedded",
            max_per_class=6,
            lrs=[3e-3],
            epochs=[1],
            image_size=16,
            serve_url="http://127.0.0.1:9",  # nothing listens on the discard port
        )


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
