"""release: register the candidate, gate it against the champion, redeploy the server."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from tasks.deploy import DeployResult, redeploy_task
from tasks.manifest import load_dataset
from tasks.registry import ReleaseResult, release_task
from tasks.reports import publish_release, release_note
from ursa.settings import Settings


@dataclass
class ReleaseOutcome:
    release: ReleaseResult
    deploy: DeployResult | None


@flow(name="release", log_prints=True)
def release(
    model_uri: str,
    dataset_manifest: str,
    margin: float = 0.0,
    serve_url: str = "",
) -> ReleaseOutcome:
    """Register ``model_uri``; make it champion if it beats the current one on the same data.

    When a server URL is given (or URSA_SERVE_URL is set) the server is told to reload and
    checked to serve the champion; a server that does not follow fails the flow.
    """
    settings = Settings.from_env()
    dataset = load_dataset(dataset_manifest)
    result = release_task(model_uri, dataset, settings.model_name, settings.tracking_uri, margin)
    target = serve_url or settings.serve_url
    deployed = None
    if target:
        deployed = redeploy_task(target, settings.admin_token, result.champion_version)
    note = release_note(result, deployed)
    publish_release(note)
    print(note)
    return ReleaseOutcome(release=result, deploy=deployed)
