"""Load shedding: a bound on the predictions in flight, sized from the measured answer rate.

A request past the bound is refused at once, before its body is read, with 503 and a
``Retry-After`` that says when the queue will have drained. Queueing more than the server
answers in about a second adds waiting, not throughput: under a burst the clients get quick
answers or quick refusals instead of answers that come after they gave up.

The bound is not sized from the model's speed alone: the server answers requests several
times slower than the model scores full batches, because the event loop, decoding and
inference share the cores (BENCHMARKS.md). So the bound follows the rate at
which requests are actually answered, measured over the last seconds, and never falls below
two batches, so that batches can still fill while the rate is being measured.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.metrics import Metrics, StatusRecordingSend

QUEUE_WAIT_S = 1.0  # longest a request should wait behind those admitted before it
RATE_WINDOW_S = 2.0  # answers counted for the rate: long enough to smooth, short to follow


class Overloaded(Exception):
    """The request was shed: the queue is full or the request's deadline passed."""

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Admission:
    """Counts the predictions in flight and refuses one past the bound.

    ``max_queue``: a fixed bound; ``None`` sizes it from the measured answer rate; ``0``
    means no bound (requests queue without limit, as before load shedding).
    """

    def __init__(
        self, max_queue: int | None, batch_size: int, timeout_s: float = 0.0, clock=time.monotonic
    ) -> None:
        self.max_queue = max_queue
        self.batch_size = batch_size
        # A deadline shorter than the wait target would shed what the queue admitted.
        self.wait_s = min(QUEUE_WAIT_S, timeout_s / 2) if timeout_s > 0 else QUEUE_WAIT_S
        self.clock = clock
        self.in_flight = 0
        self._answered: deque[float] = deque()

    def rate(self) -> float:
        """Requests answered per second over the last ``RATE_WINDOW_S`` (0 before any)."""
        horizon = self.clock() - RATE_WINDOW_S
        while self._answered and self._answered[0] < horizon:
            self._answered.popleft()
        return len(self._answered) / RATE_WINDOW_S

    def limit(self) -> int | None:
        """The most predictions in flight, or ``None`` for no bound."""
        if self.max_queue is not None:
            return self.max_queue or None
        return max(2 * self.batch_size, math.floor(self.rate() * self.wait_s))

    def retry_after_s(self) -> int:
        """Whole seconds until the requests in flight have been answered at the current rate."""
        rate = self.rate()
        if rate <= 0:
            return 1
        return max(1, math.ceil(self.in_flight / rate))

    def full(self) -> bool:
        limit = self.limit()
        return limit is not None and self.in_flight >= limit

    @contextmanager
    def slot(self) -> Iterator[Place]:
        """Hold one place in the queue, or raise :class:`Overloaded` when there is none."""
        if self.full():
            raise Overloaded("queue_full", self.retry_after_s())
        self.in_flight += 1
        place = Place()
        try:
            yield place
        finally:
            self.in_flight -= 1
            if place.answered:
                self._answered.append(self.clock())


@dataclass
class Place:
    """A place in the queue; mark it answered for a prediction, which the rate counts (a
    refusal or an error is quick, and would inflate it)."""

    answered: bool = False


OVERLOADED = "The server is overloaded: retry after the delay given."


def overloaded(metrics: Metrics, reason: str, retry_after_s: int) -> JSONResponse:
    """503 with when to come back, counted in ``ursa_shed_requests_total{reason}``."""
    metrics.shed.labels(reason).inc()
    return JSONResponse(
        {"error": OVERLOADED, "reason": reason},
        status_code=503,
        headers={"Retry-After": str(retry_after_s)},
    )


class Shedding:
    """Whether a request is a prediction to refuse now, and the refusal's bytes: what
    :class:`LoadShedding` asks in the app, and :mod:`serving.protocol` before the app."""

    def __init__(self, admission: Admission, metrics: Metrics, route: Route) -> None:
        self.admission = admission
        self.metrics = metrics
        self.route = route
        self._path = route.path.encode()
        body = JSONResponse({"error": OVERLOADED, "reason": "queue_full"}).body
        self._tail = (
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        )

    def refusal(
        self,
        method: bytes,
        path: bytes,
        default_headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
    ) -> bytes | None:
        """The whole HTTP response refusing this request (counted as shed), or ``None`` when
        it may go on to the app."""
        if method != b"POST" or path != self._path or not self.admission.full():
            return None
        self.metrics.shed.labels("queue_full").inc()
        head = [b"HTTP/1.1 503 Service Unavailable\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in default_headers]
        head.append(b"retry-after: %d\r\n" % self.admission.retry_after_s())
        if not keep_alive:
            head.append(b"connection: close\r\n")
        return b"".join(head) + self._tail

    def counted(self, seconds: float) -> None:
        """Count a refusal made before the app, as the app's metrics would have."""
        self.metrics.answered(self.route.path, "POST", 503, seconds)


class LoadShedding:
    """Holds a queue place for each prediction; refuses one when there is none.

    A pure ASGI middleware in front of the router: a refusal reads not a byte of the body.
    Served by ``ursa serve``, most refusals are made earlier still, by
    :mod:`serving.protocol`; this one holds the admitted requests' places.
    """

    def __init__(self, app: ASGIApp, shedding: Shedding) -> None:
        self.app = app
        self.shedding = shedding

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        shedding = self.shedding
        if not (
            scope["type"] == "http"
            and scope["path"] == shedding.route.path
            and scope["method"] == "POST"
        ):
            await self.app(scope, receive, send)
            return
        send_and_record = StatusRecordingSend(send)
        admission = shedding.admission
        if admission.full():
            scope["route"] = shedding.route  # counted under its route, as the router would
            response = overloaded(shedding.metrics, "queue_full", admission.retry_after_s())
            await response(scope, receive, send)
            return
        with admission.slot() as place:
            await self.app(scope, receive, send_and_record)
            place.answered = send_and_record.status == 200
