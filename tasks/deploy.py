"""Redeploy: tell a running server to load the current champion, then confirm it serves it."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prefect import task
from prefect.cache_policies import NONE


class DeployError(RuntimeError):
    pass


@dataclass
class DeployResult:
    serve_url: str
    served_version: str
    changed: bool


def redeploy(
    serve_url: str, admin_token: str, expected_version: str, timeout_s: float = 60.0
) -> DeployResult:
    """POST ``/admin/reload`` and check that ``/version`` then names ``expected_version``."""
    if not admin_token:
        raise DeployError(
            "Redeploying needs URSA_ADMIN_TOKEN: the server's reload is off without it."
        )
    with httpx.Client(base_url=serve_url, timeout=timeout_s) as client:
        try:
            reply = client.post("/admin/reload", headers={"Authorization": f"Bearer {admin_token}"})
        except httpx.HTTPError as exc:
            raise DeployError(f"Server at '{serve_url}' did not answer the reload: {exc}") from exc
        if reply.status_code != 200:
            raise DeployError(
                f"Server at '{serve_url}' refused the reload with {reply.status_code}: {reply.text}"
            )
        served = str(client.get("/version").json().get("version", ""))
    if served != str(expected_version):
        raise DeployError(
            f"Server at '{serve_url}' serves version '{served}', expected '{expected_version}'."
        )
    return DeployResult(
        serve_url=serve_url, served_version=served, changed=bool(reply.json().get("changed"))
    )


redeploy_task = task(name="redeploy", retries=2, retry_delay_seconds=2, cache_policy=NONE)(redeploy)
