"""Redeploy: tell a running server to load the current champion, then confirm it serves it."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prefect import task
from prefect.cache_policies import NONE

from tasks.registry import ReleaseResult, RollbackResult, set_aliases
from ursa.settings import Settings


class DeployError(RuntimeError):
    """The server did not end up serving the expected version.

    ``refused`` is true when the server answered that the version is broken (409): the old
    model keeps serving, retrying cannot help, and the registry should be put back.
    """

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


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
            if reply.status_code == 409:
                raise DeployError(
                    f"Server at '{serve_url}' refused version {expected_version} and keeps "
                    f"serving version {reply.json().get('version')}: {reply.json().get('error')}",
                    refused=True,
                )
            if reply.status_code != 200:
                raise DeployError(
                    f"Server at '{serve_url}' refused the reload with {reply.status_code}: "
                    f"{reply.text}"
                )
            served = str(client.get("/version").json().get("version", ""))
        except httpx.HTTPError as exc:
            raise DeployError(f"Server at '{serve_url}' did not answer the reload: {exc}") from exc
    if served != str(expected_version):
        raise DeployError(
            f"Server at '{serve_url}' serves version '{served}', expected '{expected_version}'."
        )
    return DeployResult(
        serve_url=serve_url, served_version=served, changed=bool(reply.json().get("changed"))
    )


@dataclass(frozen=True)
class Aliases:
    """Where ``champion`` and ``previous`` pointed before a release or rollback moved them."""

    champion: str
    previous: str  # "" when there was no ``previous``


def redeploy_or_put_back(
    serve_url: str,
    admin_token: str,
    expected_version: str,
    model_name: str,
    tracking_uri: str,
    put_back: Aliases | None,
    timeout_s: float = 60.0,
) -> DeployResult:
    """Redeploy; when the server refuses ``expected_version`` as broken, put the aliases back.

    A server that refuses a version keeps serving its old model, so the registry goes back to
    naming that model too: otherwise the next poll or restart would try the broken version
    again. ``put_back`` is None when the aliases did not move (nothing to undo).
    """
    try:
        return redeploy(serve_url, admin_token, expected_version, timeout_s)
    except DeployError as exc:
        if not (exc.refused and put_back is not None):
            raise
        set_aliases(model_name, tracking_uri, put_back.champion, put_back.previous)
        raise DeployError(
            f"{exc} The champion alias is back on '{put_back.champion}'.", refused=True
        ) from exc


def retry_unless_refused(task, task_run, state) -> bool:
    """Prefect retry condition: a server that is down may come back; a refusal will not change."""
    try:
        state.result()
    except DeployError as exc:
        return not exc.refused
    except Exception:
        return True
    return False


redeploy_task = task(
    name="redeploy",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_refused,
    cache_policy=NONE,
)(redeploy_or_put_back)


def aliases_before(result: ReleaseResult | RollbackResult) -> Aliases | None:
    """Where ``champion`` and ``previous`` pointed before ``result`` moved them: what to put
    back if the server refuses the new champion. None when a release promoted nothing."""
    if isinstance(result, RollbackResult):
        return Aliases(champion=result.replaced_version, previous=result.champion_version)
    if not result.promoted:
        return None
    return Aliases(champion=result.previous_version, previous=result.prior_previous_version)


def champion_deployment(
    result: ReleaseResult | RollbackResult, serve_url: str, settings: Settings
) -> DeployResult | None:
    """The server at ``serve_url`` (empty: URSA_SERVE_URL) redeployed to serve the champion
    that ``result`` left, the aliases put back if it refuses it as broken; None when there is
    no server to redeploy. The release and rollback flows both end with it."""
    target = serve_url or settings.serve_url
    if not target:
        return None
    return redeploy_task(
        target,
        settings.admin_token,
        result.champion_version,
        settings.model_name,
        settings.tracking_uri,
        aliases_before(result),
    )
