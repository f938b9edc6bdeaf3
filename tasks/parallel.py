"""Chunks of CPU work over worker processes and this one, results in chunk order.

Decoding holds the GIL, so threads would not help. Workers come from a fork server, not a
fork of this process: the caller (Prefect) runs threads, and forking a threaded process can
deadlock. The fork server is a fresh single-threaded process that imports the caller's main
module once; each worker forked from it then imports only the module of the function it
runs, so that function must live in a light module (Pillow and numpy, not Prefect or torch).
With "spawn", every worker imported the caller's main module itself and the cache build on
2 cores was slower (BENCHMARKS.md). This process works on chunks too instead of waiting for
the workers to start.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TypeVar

Chunk = TypeVar("Chunk")
Result = TypeVar("Result")


def usable_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def map_chunks(
    work: Callable[[Chunk], Result], chunks: Sequence[Chunk], workers: int
) -> list[Result]:
    """``[work(c) for c in chunks]`` over ``workers - 1`` worker processes and this one.

    Each worker keeps at most two chunks queued, so memory holds a few chunks' results at a
    time beyond those returned, whatever the number of chunks.
    """
    with WorkerPool(workers) as pool:
        return pool.map(work, chunks)


class WorkerPool:
    """:func:`map_chunks` for a caller that maps again and again (a stream cut into pieces):
    the worker processes are started at the first :meth:`map` that needs them and serve
    every later one, instead of being started again for each piece."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    @property
    def started(self) -> bool:
        """Whether the worker processes run (they start at the first map that needs them)."""
        return self._pool is not None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def map(self, work: Callable[[Chunk], Result], chunks: Sequence[Chunk]) -> list[Result]:
        """``[work(c) for c in chunks]``, on the workers and this process."""
        if self.workers <= 1 or len(chunks) < 2:
            return [work(c) for c in chunks]
        children = self.workers - 1
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            self._pool = ProcessPoolExecutor(max_workers=children, mp_context=context)
        results: list[Result | None] = [None] * len(chunks)
        in_flight: dict[Future[Result], int] = {}
        taken = 0
        while taken < len(chunks) or in_flight:
            while taken < len(chunks) and len(in_flight) < 2 * children:
                in_flight[self._pool.submit(work, chunks[taken])] = taken
                taken += 1
            if taken < len(chunks):
                results[taken] = work(chunks[taken])  # this process's share
                taken += 1
                done = [f for f in in_flight if f.done()]
            else:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                results[in_flight.pop(future)] = future.result()
        return results  # type: ignore[return-value]
