"""Progress for long work: a rich bar on a terminal, a Prefect progress artifact in the UI."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import get_run_context
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def _in_prefect_run() -> bool:
    try:
        get_run_context()
    except Exception:  # MissingContextError: called outside a flow or task run
        return False
    return True


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[Any], None]]:
    """Yields ``tick(item)`` to call once per finished item."""
    done = 0
    bar = None
    if sys.stderr.isatty():
        bar = Progress(
            TextColumn(description),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=False,
        )
        bar_task = bar.add_task(description, total=total)
        bar.start()
    artifact_id = None
    if _in_prefect_run():
        artifact_id = create_progress_artifact(0.0, description=description)
    last_update = 0.0

    def tick(_item: Any = None) -> None:
        nonlocal done, last_update
        done += 1
        if bar is not None:
            bar.advance(bar_task)
        now = time.monotonic()
        # The Prefect API is a network call: update it at most twice a second.
        if artifact_id is not None and (now - last_update > 0.5 or done == total):
            update_progress_artifact(artifact_id, 100.0 * done / max(total, 1))
            last_update = now

    try:
        yield tick
    finally:
        if bar is not None:
            bar.stop()
        if artifact_id is not None:
            update_progress_artifact(artifact_id, 100.0 * done / max(total, 1))
