"""The Starlette application: predict, health, version and an admin reload.

Every error is answered as JSON ``{"error": "..."}``. Inference runs on one dedicated
worker thread, never on the event loop; model reloads run on Starlette's thread pool so
that predictions go on with the old model while the new one loads.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from mlflow.exceptions import MlflowException
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.models import ModelHolder, NoChampion
from serving.uploads import UploadError, read_image
from ursa.package import PackageError
from ursa.settings import Settings

logger = logging.getLogger("ursa.serving")

DEFAULT_K = 3


def error(status_code: int, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status_code)


def no_model() -> JSONResponse:
    return error(503, "No model is loaded yet.")


async def predict(request: Request) -> JSONResponse:
    loaded = request.app.state.holder.current
    if loaded is None:
        return no_model()
    k = top_k(request.query_params.get("k"), len(loaded.classes))
    settings: Settings = request.app.state.settings
    image = await read_image(request, settings.max_body_bytes, settings.max_image_pixels)
    loop = asyncio.get_running_loop()
    probabilities = await loop.run_in_executor(
        request.app.state.inference, loaded.package.probabilities, [image]
    )
    row = probabilities[0]
    best = row.argsort()[::-1][:k]
    return JSONResponse(
        {
            "model": loaded.name,
            "version": loaded.version,
            "predictions": [
                {"label": str(loaded.classes[i]), "probability": float(row[i])} for i in best
            ],
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
    if not authorized(request, request.app.state.settings.admin_token):
        return JSONResponse(
            {"error": "A valid admin bearer token is required."},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    holder: ModelHolder = request.app.state.holder
    try:
        result = await run_in_threadpool(holder.reload)
    except (NoChampion, PackageError) as exc:
        return error(409, str(exc), version=current_version(holder))
    except MlflowException:
        logger.exception("Model registry unavailable during reload")
        return error(503, "The model registry is unavailable.", version=current_version(holder))
    return JSONResponse(
        {
            "changed": result.changed,
            "version": result.current.version,
            "previous": result.previous.version if result.previous else None,
        }
    )


def authorized(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Header values arrive latin-1 decoded; compare the bytes, in constant time.
    return hmac.compare_digest(given.strip().encode("latin-1"), token.encode("utf-8"))


def current_version(holder: ModelHolder) -> str | None:
    return holder.current.version if holder.current else None


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


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

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ursa-inference")
        app.state.inference = inference
        try:
            loaded = (await run_in_threadpool(holder.reload)).current
            logger.info("Serving %s version %s", loaded.name, loaded.version)
        except (NoChampion, PackageError) as exc:
            logger.warning("Starting without a model: %s", exc)
        except Exception:  # an unreachable registry must not stop the server: /readyz tells
            logger.exception("Starting without a model: the champion could not be loaded")
        yield
        inference.shutdown(wait=False, cancel_futures=True)

    routes = [
        Route("/predict", predict, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
    ]
    if settings.admin_token:  # no token configured: the admin endpoints do not exist
        routes.append(Route("/admin/reload", reload, methods=["POST"]))

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            HTTPException: http_error,
            UploadError: upload_error,
            Exception: server_error,
        },
    )
    app.state.settings = settings
    app.state.holder = holder
    return app
