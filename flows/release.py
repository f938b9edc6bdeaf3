"""release: register the candidate, gate it against the champion, redeploy the server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.deploy import DeployError, DeployResult, champion_deployment
from tasks.manifest import load_dataset
from tasks.policies import HOUR
from tasks.registry import ReleaseResult, release_task
from tasks.reports import publish_release, release_note
from ursa.settings import Settings


@dataclass
class ReleaseOutcome:
    release: ReleaseResult
    deploy: DeployResult | None


@flow(name="release", log_prints=True, timeout_seconds=2 * HOUR)
def release(
    model_uri: str,
    dataset_manifest: str,
    margin: Annotated[float, Field(ge=0, lt=1)] | None = None,
    serve_url: str = "",
) -> ReleaseOutcome:
    """Register a model; make it champion if it beats the current one on the same data.

    When a server URL is given (or URSA_SERVE_URL is set) the server is told to reload and
    checked to serve the champion; a server that does not follow fails the flow. A server that
    refuses the new champion as broken keeps the old one, and so does the registry: the
    aliases are put back before the flow fails.

    Args:
        model_uri: The candidate: models:/m-<id> as printed by the train flow, or a
            registered version, models:/<name>/<version>.
        dataset_manifest: The dataset whose validation split both models are scored on.
        margin: Accuracy the candidate must beat the champion by (empty: URSA_RELEASE_MARGIN).
        serve_url: Server to redeploy (empty: URSA_SERVE_URL, or none).
    """
    settings = Settings.from_env()
    dataset = load_dataset(dataset_manifest)
    margin = settings.release_margin if margin is None else margin
    result = release_task(
        model_uri,
        dataset,
        settings.model_name,
        settings.tracking_uri,
        margin,
        settings.release_min_valid,
    )
    try:
        deployed = champion_deployment(result, serve_url, settings)
    except DeployError as exc:
        publish_release(release_note(result, None, failure=str(exc)))
        raise
    note = release_note(result, deployed)
    publish_release(note)
    print(note)
    return ReleaseOutcome(release=result, deploy=deployed)
