"""The Starlette application: the upload page, predict, health, version, metrics, the API
description and an admin reload.

Every error is answered as JSON ``{"error": "..."}``, never with a traceback or an internal
path. Uploads are decoded on a pool of one thread per core; predictions then go through the
dynamic batcher (``serving/batching.py``), whose batches run on one dedicated inference
thread, never on the event loop. Reloads (admin, polling, start) run on Starlette's thread
pool, so predictions go on with the old model while the new one loads and warms; the swap
itself is atomic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from mlflow.exceptions import MlflowException
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serving.auth import bearer_matches, unauthorized
from serving.batching import Batcher, NotLoaded
from serving.feedback import RateLimiter, feedback_routes
from serving.health import HealthProcess
from serving.metrics import Metrics, MetricsMiddleware, metrics_endpoint, watch_event_loop
from serving.models import ModelHolder, NoChampion, Reload
from serving.openapi import openapi_endpoint
from serving.page import upload_page
from serving.predictionlog import LogOptions, PredictionLog, prediction_record
from serving.responses import STATIC_DIR, error
from serving.review import review_routes
from serving.shedding import Admission, LoadShedding, Shedding, overloaded
from serving.uploads import UploadError, read_upload
from ursa.package import PackageError
from ursa.settings import Settings

logger = logging.getLogger("ursa.serving")

DEFAULT_K = 3
# Absolute paths and file URIs in error messages say where things live on the server.
_PATH = re.compile(r"(?:file://|(?<![\w:/]))(?:/[^\s'\"/:]+){2,}/?")


def redact_paths(message: str) -> str:
    return _PATH.sub("<path>", message)


def no_model() -> JSONResponse:
    return error(503, "No model is loaded yet.")


async def predict(request: Request) -> JSONResponse:
    loaded = request.app.state.holder.current
    if loaded is None:
        return no_model()
    k = top_k(request.query_params.get("k"), len(loaded.classes))
    settings: Settings = request.app.state.settings
    log: PredictionLog = request.app.state.prediction_log
    logged = log.sampled()
    # The queue place was taken before the body is read (serving/shedding.py); the deadline
    # counts from here: reading, decoding, waiting for a batch and inference.
    try:
        async with asyncio.timeout(settings.request_timeout_s or None):
            upload = await read_upload(
                request,
                settings.max_body_bytes,
                settings.max_image_pixels,
                request.app.state.decoding,
                describe=logged,
            )
            scored = await request.app.state.batcher.score(upload.image)
    except NotLoaded:
        return no_model()
    except TimeoutError:
        admission: Admission = request.app.state.admission
        return overloaded(request.app.state.metrics, "deadline", admission.retry_after_s())
    # The batch ran on the model current when it started: name that one, not ``loaded``.
    model, row = scored.model, scored.probabilities
    best = row.argsort()[::-1][: min(k, len(model.classes))]
    if logged:  # queued for the log's writer thread; never waits, never fails the request
        log.offer(prediction_record(model, row, upload), upload.data)
    return JSONResponse(
        {
            "model": model.name,
            "version": model.version,
            "predictions": [
                {"label": str(model.classes[i]), "probability": float(row[i])} for i in best
            ],
            "sha256": upload.sha256,  # what feedback about this image names
        }
    )


def top_k(raw: str | None, n_classes: int) -> int:
    if raw is None:
        return min(DEFAULT_K, n_classes)
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= n_classes:
        raise HTTPException(400, f"Query parameter k must be an integer from 1 to {n_classes}.")
    return int(raw)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    loaded = request.app.state.holder.current
    if loaded is None:
        return no_model()
    return JSONResponse({"status": "ready", "model": loaded.name, "version": loaded.version})


async def version(request: Request) -> JSONResponse:
    loaded = request.app.state.holder.current
    if loaded is None:
        return no_model()
    return JSONResponse(loaded.describe())


async def reload(request: Request) -> JSONResponse:
    if not bearer_matches(request, request.app.state.settings.admin_token):
        return unauthorized()
    holder: ModelHolder = request.app.state.holder
    try:
        result = await reload_model(request.app, "admin")
    except (NoChampion, PackageError) as exc:
        return error(409, redact_paths(str(exc)), version=current_version(holder))
    except MlflowException:
        return error(503, "The model registry is unavailable.", version=current_version(holder))
    return JSONResponse(
        {
            "changed": result.changed,
            "version": result.current.version,
            "previous": result.previous.version if result.previous else None,
        }
    )


async def reload_model(app: Starlette, trigger: str, retry_refused: bool = True) -> Reload:
    """Load the champion beside the served model and swap; count and log the outcome."""
    holder: ModelHolder = app.state.holder
    metrics: Metrics = app.state.metrics
    try:
        result = await run_in_threadpool(holder.reload, retry_refused)
    except (NoChampion, PackageError):
        metrics.reloads.labels(trigger, "refused").inc()
        raise
    except Exception:
        metrics.reloads.labels(trigger, "error").inc()
        logger.exception("Reload (%s) failed: the model registry is unavailable", trigger)
        raise
    metrics.reloads.labels(trigger, "changed" if result.changed else "unchanged").inc()
    metrics.serving(result.current.name, result.current.version)
    if result.changed:
        logger.info(
            "Serving %s version %s (was %s; %s)",
            result.current.name,
            result.current.version,
            result.previous.version if result.previous else "none",
            trigger,
        )
    return result


async def poll_champion(app: Starlette, interval_s: float) -> None:
    """Reload whenever the champion alias moves, e.g. by hand in the MLflow UI."""
    last_problem = ""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await reload_model(app, "poll", retry_refused=False)
            last_problem = ""
        except Exception as exc:  # the server keeps serving; say so once, not every tick
            if str(exc) != last_problem:
                logger.warning("Polling the champion: %s", exc)
                last_problem = str(exc)


def loaded_model(holder: ModelHolder) -> tuple[str, str] | None:
    """The loaded model's name and version, or ``None`` before one is loaded."""
    loaded = holder.current
    return None if loaded is None else (loaded.name, loaded.version)


def current_version(holder: ModelHolder) -> str | None:
    return holder.current.version if holder.current else None


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, exc.detail, headers=exc.headers)


async def upload_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UploadError)
    extra = {"reason": exc.reason} if exc.reason else {}
    return error(exc.status_code, exc.message, **extra)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log; the client learns nothing about the internals.
    return error(500, "Internal server error.")


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    holder = ModelHolder(settings.model_name, settings.tracking_uri)
    metrics = Metrics()
    prediction_log = PredictionLog(
        settings.data_dir,
        LogOptions(
            sample=settings.log_sample,
            queue_size=settings.log_queue_size,
            rotate_bytes=settings.log_rotate_bytes,
            images_max_bytes=settings.log_images_max_bytes,
            retention_days=settings.log_retention_days,
        ),
        count=metrics.count_log,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ursa-inference")
        # Decoding is CPU work that Pillow does without the GIL: one thread per core is all it
        # can use. Starlette's pool (40 threads) let 40 decodes fight the inference threads for
        # the cores; this pool serves more requests per second (BENCHMARKS.md).
        cores = max(1, len(os.sched_getaffinity(0)))
        decoding = ThreadPoolExecutor(max_workers=cores, thread_name_prefix="ursa-decode")
        app.state.decoding = decoding
        batcher = Batcher(
            lambda: holder.current,
            inference,
            max_size=settings.batch_max_size,
            max_wait_ms=settings.batch_max_wait_ms,
            on_batch=metrics.batch_size.observe,
        )
        batcher.start()
        app.state.batcher = batcher
        prediction_log.start()
        try:
            await reload_model(app, "start")
        except (NoChampion, PackageError) as exc:
            logger.warning("Starting without a model: %s", exc)
        except Exception:  # an unreachable registry must not stop the server: /readyz tells
            logger.warning("Starting without a model: the champion could not be loaded")
        poller = None
        if settings.poll_interval_s > 0:
            poller = asyncio.create_task(poll_champion(app, settings.poll_interval_s))
        health = None
        if settings.health_port:
            health = HealthProcess(settings.serve_host, settings.health_port)

        def beat() -> None:
            if health is not None:
                health.state.beat(loaded_model(holder))

        beat()  # the page says which model is loaded before the first probe can ask
        loop_watch = asyncio.create_task(watch_event_loop(metrics, beat))
        yield
        if health is not None:
            health.stop()
        loop_watch.cancel()
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        await batcher.stop()
        await run_in_threadpool(prediction_log.stop)
        inference.shutdown(wait=False, cancel_futures=True)
        decoding.shutdown(wait=False, cancel_futures=True)

    predict_route = Route("/predict", predict, methods=["POST"])
    routes = [
        Route("/", upload_page, methods=["GET"]),
        predict_route,
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        # The pages' scripts and styles, so the pages' policy can say script-src 'self'.
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    if settings.admin_token:  # no token configured: the admin endpoints do not exist
        routes.append(Route("/admin/reload", reload, methods=["POST"]))
    routes += review_routes(settings)  # /review: also only with an admin token
    routes += feedback_routes(settings)

    admission = Admission(settings.max_queue, settings.batch_max_size, settings.request_timeout_s)
    middleware = [Middleware(MetricsMiddleware, metrics=metrics)]
    if settings.cors_origins:  # off unless configured; never for the admin token header
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Content-Type"],
                max_age=600,
            )
        )
    # Innermost, so that refusals are counted and carry CORS headers like any answer.
    shedding = Shedding(admission, metrics, predict_route)
    middleware.append(Middleware(LoadShedding, shedding=shedding))

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            HTTPException: http_error,
            UploadError: upload_error,
            Exception: server_error,
        },
    )
    app.state.settings = settings
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.admission = admission
    app.state.shedding = shedding
    app.state.prediction_log = prediction_log
    app.state.feedback_limiter = RateLimiter(settings.feedback_per_minute)
    return app
