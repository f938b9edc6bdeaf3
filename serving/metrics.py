"""Prometheus metrics: requests by route and status, latency, batch sizes, the served version.

Each app gets its own registry, so two apps in one process (tests, benchmarks) never share
or clash over counters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ursa_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ursa_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "ursa_batch_size",
            "Images per inference batch.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.model_version = Gauge(
            "ursa_model_version_info",
            "1 for the model version being served (no series while none is loaded).",
            ["model", "version"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "ursa_model_reloads",
            "Model reload attempts, by trigger (admin or poll) and outcome.",
            ["trigger", "outcome"],
            registry=self.registry,
        )

        self.shed = Counter(
            "ursa_shed_requests",
            "Predictions refused with 503 under overload, by reason (queue_full or deadline).",
            ["reason"],
            registry=self.registry,
        )
        for reason in ("queue_full", "deadline"):  # both series exist from the start, at 0
            self.shed.labels(reason)
        self.loop_lag = Histogram(
            "ursa_event_loop_lag_seconds",
            "How late the event loop wakes a 0.1 s sleep: what a new request or a health probe "
            "waits before the server even looks at it.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.prediction_log = Counter(
            "ursa_prediction_log_records",
            "Prediction log records: written, dropped_queue_full (the writer fell behind), "
            "dropped_write_error (the disk refused).",
            ["outcome"],
            registry=self.registry,
        )
        self.kept_images = Counter(
            "ursa_prediction_log_images",
            "Uploaded images the log was to keep: kept, over_cap, write_error.",
            ["outcome"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "ursa_feedback",
            "Feedback answers from the upload page, by outcome (stored, refused, rate_limited).",
            ["outcome"],
            registry=self.registry,
        )

    def count_log(self, kind: str, outcome: str, n: int = 1) -> None:
        """Count prediction-log ``records`` or ``images`` by outcome (from the writer thread)."""
        counter = self.prediction_log if kind == "records" else self.kept_images
        counter.labels(outcome).inc(n)

    def answered(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request answered, under its route template."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def serving(self, model: str, version: str) -> None:
        """Record that ``model`` ``version`` is now the one served."""
        self.model_version.clear()
        self.model_version.labels(model=model, version=version).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class StatusRecordingSend:
    """An ASGI ``send`` that passes every message on and keeps the response's status code,
    for a middleware to read once the app has answered. It is 500 until a response starts:
    what the client gets if the app fails before one."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class MetricsMiddleware:
    """Counts and times every HTTP request; the route label is the template, never the path."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        send_and_record = StatusRecordingSend(send)
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            # Unmatched paths share one label, so a scan cannot blow up the series count.
            label = getattr(route, "path", None) or "(unmatched)"
            self.metrics.answered(
                label, scope["method"], send_and_record.status, time.perf_counter() - started
            )


async def watch_event_loop(
    metrics: Metrics, beat: Callable[[], None], interval_s: float = 0.1
) -> None:
    """Observe the event loop's lag, and ``beat`` each time the loop runs, until cancelled
    (run it as a task in the lifespan)."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval_s)
        beat()
        metrics.loop_lag.observe(max(0.0, loop.time() - started - interval_s))


async def metrics_endpoint(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
