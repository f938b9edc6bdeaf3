"""Dynamic batching: requests wait in a queue and run through the model together.

A batch closes when it holds ``max_size`` images or when its oldest request has waited
``max_wait_ms``, whichever comes first, so a lone request never waits longer than that
budget. One batch runs at a time, on a dedicated inference thread, never on the event
loop; while it runs, the next batch fills up. Each batch runs on the model that is current
when it starts, and every answer carries that model, so a hot swap never mixes versions
inside a batch and every answer names the version that produced it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from PIL import Image


class NotLoaded(RuntimeError):
    """No model is loaded, so the queued request cannot be answered."""


@dataclass(frozen=True)
class Scored:
    """One image's class probabilities and the model that produced them."""

    probabilities: np.ndarray
    model: object  # a serving.models.LoadedModel (kept loose: batching knows no registry)


@dataclass
class _Pending:
    image: Image.Image
    future: asyncio.Future[Scored]
    queued_at: float


class Batcher:
    """Queues images and answers each with its row of a batched prediction."""

    def __init__(
        self,
        current_model: Callable[[], object | None],
        executor: Executor,
        max_size: int = 32,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.current_model = current_model
        self.executor = executor
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ursa-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(NotLoaded("The server is shutting down."))

    async def score(self, image: Image.Image) -> Scored:
        """The probabilities for ``image``, computed in the next batch."""
        if self._task is None or self._task.done():
            raise RuntimeError("The batcher is not running (start it in the app's lifespan).")
        future: asyncio.Future[Scored] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(image, future, time.monotonic()))
        return await future

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            await self._run_batch(batch)

    async def _collect(self) -> list[_Pending]:
        """Wait for one request, then gather more until the batch is full or its time is up."""
        first = await self._queue.get()
        batch = [first]
        deadline = first.queued_at + self.max_wait_s
        while len(batch) < self.max_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        # Requests whose clients went away need no inference.
        return [p for p in batch if not p.future.done()]

    async def _run_batch(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        model = self.current_model()
        if model is None:
            for p in batch:
                p.future.set_exception(NotLoaded("No model is loaded yet."))
            return
        images = [p.image for p in batch]
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(self.executor, model.package.probabilities, images)
        except (Exception, asyncio.CancelledError) as exc:
            failure = exc if isinstance(exc, Exception) else NotLoaded("The server stopped.")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(failure)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if self.on_batch is not None:
            self.on_batch(len(batch))
        for p, row in zip(batch, rows, strict=True):
            if not p.future.done():
                p.future.set_result(Scored(row, model))
