"""Progress for long work: a rich bar on a terminal, a Prefect progress artifact in the UI."""

from __future__ import annotations

import sys
import threading
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
    """Yields ``tick(item)`` to call once per finished item, from any thread or event loop.

    ``tick`` only counts (and moves the terminal bar, which is thread-safe); the Prefect
    artifact is updated from a thread of its own, because its client must not be called from
    inside the caller's event loop, and once a second is plenty for a person watching.
    """
    done = 0
    bar = None
    if sys.stderr.isatty():
        bar = Progress(
            TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        )
        bar_task = bar.add_task(description, total=total)
        bar.start()

    def tick(_item: Any = None) -> None:
        nonlocal done
        done += 1
        if bar is not None:
            bar.advance(bar_task)

    stop = threading.Event()
    reporter = None
    if _in_prefect_run():
        artifact_id = create_progress_artifact(0.0, description=description)

        def report() -> None:
            while not stop.wait(1.0):
                update_progress_artifact(artifact_id, 100.0 * done / max(total, 1))
            update_progress_artifact(artifact_id, 100.0 * done / max(total, 1))

        reporter = threading.Thread(target=report, name=f"progress-{description}", daemon=True)
        reporter.start()
    try:
        yield tick
    finally:
        stop.set()
        if reporter is not None:
            reporter.join(timeout=10)
        if bar is not None:
            bar.stop()
