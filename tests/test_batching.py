"""The dynamic batcher on its own: grouping, the wait budget, failures, one model per batch."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

from serving.batching import Batcher, NotLoaded


@dataclass
class CountingPackage:
    """Records the size of every batch and which thread ran it; answers one-hot rows."""

    delay_s: float = 0.0
    sizes: list[int] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)

    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        self.sizes.append(len(images))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return np.array([[im.width, 0.0] for im in images])


@dataclass
class Model:
    package: CountingPackage
    version: str = "1"


def image(width: int) -> Image.Image:
    return Image.new("RGB", (width, 1))


async def score_many(batcher: Batcher, widths: list[int]) -> list:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.score(image(w)) for w in widths))
    finally:
        await batcher.stop()


def test_concurrent_requests_run_together_and_get_their_own_rows() -> None:
    model = Model(CountingPackage())
    with ThreadPoolExecutor(1, thread_name_prefix="infer") as pool:
        batcher = Batcher(lambda: model, pool, max_size=8, max_wait_ms=50)
        results = asyncio.run(score_many(batcher, list(range(1, 21))))
    assert [r.probabilities[0] for r in results] == list(range(1, 21))
    assert model.package.sizes == [8, 8, 4]
    assert all(r.model is model for r in results)
    assert model.package.threads and all(t.startswith("infer") for t in model.package.threads)


def test_a_lone_request_waits_for_company_then_goes_alone_at_the_budget() -> None:
    """Told by which requests share a batch, not by a stopwatch: the batcher's timeout and
    the test's sleeps are timers of one event loop, so they fire in the order of their
    deadlines however busy the machine is."""
    model = Model(CountingPackage())
    budget_s = 0.2

    async def arrivals() -> None:
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.score(image(1)))
            await asyncio.sleep(budget_s / 10)  # well inside the budget: same batch
            await asyncio.gather(first, batcher.score(image(2)))
            lone = asyncio.ensure_future(batcher.score(image(3)))
            await asyncio.sleep(3 * budget_s)  # past the budget: the lone one has gone
            await asyncio.gather(lone, batcher.score(image(4)))
        finally:
            await batcher.stop()

    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(lambda: model, pool, max_size=32, max_wait_ms=1000 * budget_s)
        asyncio.run(asyncio.wait_for(arrivals(), timeout=60))
    assert model.package.sizes == [2, 1, 1]


def test_requests_queue_while_a_batch_runs() -> None:
    model = Model(CountingPackage(delay_s=0.2))

    async def staggered() -> None:
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.score(image(1)))
            await asyncio.sleep(0.05)  # the first batch is running now
            await asyncio.gather(first, *(batcher.score(image(w)) for w in range(2, 7)))
        finally:
            await batcher.stop()

    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(lambda: model, pool, max_size=32, max_wait_ms=0)
        asyncio.run(staggered())
    assert model.package.sizes == [1, 5]


def test_a_failing_batch_fails_its_requests_and_the_next_batch_runs() -> None:
    class Failing(CountingPackage):
        def probabilities(self, images: list[Image.Image]) -> np.ndarray:
            super().probabilities(images)
            if len(self.sizes) == 1:
                raise RuntimeError("boom")
            return np.zeros((len(images), 2))

    model = Model(Failing())

    async def twice() -> None:
        batcher.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.score(image(1))
            assert (await batcher.score(image(2))).model is model
        finally:
            await batcher.stop()

    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(lambda: model, pool, max_size=4, max_wait_ms=1)
        asyncio.run(twice())


def test_no_model_is_not_loaded() -> None:
    async def none() -> None:
        batcher.start()
        try:
            with pytest.raises(NotLoaded):
                await batcher.score(image(1))
        finally:
            await batcher.stop()

    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(lambda: None, pool, max_size=4, max_wait_ms=1)
        asyncio.run(none())
