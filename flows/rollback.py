"""rollback: make the previous champion the champion again, and redeploy the server."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from tasks.deploy import DeployResult, champion_deployment
from tasks.policies import HOUR
from tasks.registry import RollbackResult, rollback_task
from tasks.reports import publish_release
from ursa.settings import Settings


@dataclass
class RollbackOutcome:
    rollback: RollbackResult
    deploy: DeployResult | None


@flow(name="rollback", log_prints=True, timeout_seconds=HOUR)
def rollback(serve_url: str = "") -> RollbackOutcome:
    """Point ``champion`` back at ``previous`` (and ``previous`` at the rolled-back version).

    With a server URL (or URSA_SERVE_URL) the server reloads and must serve the restored
    version; if it refuses it as broken, the aliases are put back and the flow fails.

    Args:
        serve_url: Server to redeploy (empty: URSA_SERVE_URL, or none).
    """
    settings = Settings.from_env()
    result = rollback_task(settings.model_name, settings.tracking_uri)
    deployed = champion_deployment(result, serve_url, settings)
    served = (
        f"\n- served: version {deployed.served_version} at {deployed.serve_url}\n"
        if deployed
        else ""
    )
    note = result.summary() + served
    publish_release(note, key="rollback-note")
    print(note)
    return RollbackOutcome(rollback=result, deploy=deployed)
