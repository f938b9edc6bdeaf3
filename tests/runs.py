"""What one flow run left in the session's Prefect server: its artifacts and its task runs.

Filtered by the flow run's id (and its subflows'), never by key alone: the session shares one
Prefect server, so an earlier test may have published the same keys.
"""

from __future__ import annotations

import asyncio
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterName,
)
from prefect.client.schemas.objects import TaskRun


async def _run_tree(client: PrefectClient, root: UUID) -> list[UUID]:
    """``root`` and every subflow run below it."""
    ids, frontier = [root], [root]
    while frontier:
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)
            )
        )
        frontier = [run.id for run in children]
        ids += frontier
    return ids


def artifacts(flow_run_id: UUID) -> dict[str, str]:
    """Key -> data of the artifacts published by the run and its subflows (latest per key)."""

    async def read() -> dict[str, str]:
        async with get_client() as client:
            ids = await _run_tree(client, flow_run_id)
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
            )
        return {a.key: str(a.data) for a in sorted(found, key=lambda a: a.created) if a.key}

    return asyncio.run(read())


def task_runs(flow_run_id: UUID, name_like: str) -> list[TaskRun]:
    """The task runs of the run and its subflows whose name contains ``name_like``."""

    async def read() -> list[TaskRun]:
        async with get_client() as client:
            ids = await _run_tree(client, flow_run_id)
            return await client.read_task_runs(
                task_run_filter=TaskRunFilter(
                    flow_run_id=TaskRunFilterFlowRunId(any_=ids),
                    name=TaskRunFilterName(like_=name_like),
                )
            )

    return asyncio.run(read())
