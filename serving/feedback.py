"""Feedback from people: ``POST /feedback`` (from the upload page's "Right?") and the review
page's feedback queue (``/review/api/feedback*``), where a reviewer accepts or rejects it.

``POST /feedback`` needs no token: anyone who got an answer may say whether it was right.
It is therefore rate-limited per client address, accepted only for images the prediction
log kept, and stored unconfirmed; only a reviewer's ``accept`` puts the image into the
cleaning ledger (and so into the next dataset). The format is :mod:`ursa.feedback`.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from serving.responses import error
from serving.review import json_body, refused_reviewer, reviewer, write_refusal
from ursa.feedback import FeedbackError, feedback_items, read_feedback, record_feedback, review
from ursa.ledger import LedgerError, check_sha256
from ursa.predictions import images_dir, kept_answer
from ursa.settings import Settings

WINDOW_S = 60.0
MAX_CLIENTS = 10_000  # addresses remembered at once; the oldest is forgotten first


class RateLimiter:
    """At most ``per_window`` calls per client in any ``window_s`` seconds (sliding window)."""

    def __init__(self, per_window: int, window_s: float = WINDOW_S) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._calls: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str, now: float | None = None) -> float:
        """0 when ``client`` may call now (the call is counted), else seconds to wait."""
        now = time.monotonic() if now is None else now
        calls = self._calls.pop(client, deque())
        while calls and calls[0] <= now - self.window_s:
            calls.popleft()
        self._calls[client] = calls  # most recently seen last
        if len(self._calls) > MAX_CLIENTS:
            self._calls.popitem(last=False)
        if len(calls) >= self.per_window:
            return calls[0] + self.window_s - now
        calls.append(now)
        return 0.0


def _classes(request: Request) -> list[str] | None:
    loaded = request.app.state.holder.current
    return list(loaded.classes) if loaded is not None else None


async def give_feedback(request: Request) -> Response:
    """``{"sha256": <from the answer>, "label": <the right class>}`` -> 201, unconfirmed."""
    metrics = request.app.state.metrics
    limiter: RateLimiter = request.app.state.feedback_limiter
    wait = limiter.retry_after(request.client.host if request.client else "")
    if wait > 0:
        metrics.feedback.labels("rate_limited").inc()
        return error(
            429,
            "Too much feedback from this address; try again later.",
            headers={"Retry-After": str(max(1, round(wait)))},
        )
    classes = _classes(request)
    if classes is None:
        return error(503, "No model is loaded yet.")
    try:
        body = await json_body(request)
        item = await run_in_threadpool(
            record_feedback,
            request.app.state.settings.data_dir,
            str(body.get("sha256", "")),
            str(body.get("label", "")),
            classes,
        )
    except LedgerError as exc:
        metrics.feedback.labels("refused").inc()
        return error(400, str(exc))
    except FeedbackError as exc:
        metrics.feedback.labels("refused").inc()
        return error(exc.status, str(exc))
    metrics.feedback.labels("stored").inc()
    return JSONResponse({"id": item["id"], "state": "pending"}, status_code=201)


# --- the review page's feedback queue --------------------------------------------------------


def _data_dir(request: Request) -> Path:
    settings: Settings = request.app.state.settings
    return settings.data_dir


async def feedback_queue(request: Request) -> JSONResponse:
    if reviewer(request) is None:
        return refused_reviewer()
    state = request.query_params.get("state", "pending")
    try:
        items = feedback_items(await run_in_threadpool(read_feedback, _data_dir(request)))
    except LedgerError as exc:
        return error(500, f"The feedback file cannot be read: {exc}")
    chosen = [i for i in items if state == "all" or i["state"] == state]
    return JSONResponse(
        {
            "state": state,
            "total": len(chosen),
            "pending": sum(i["state"] == "pending" for i in items),
            "classes": _classes(request) or [],
            "items": [
                {**i, "image_url": f"api/feedback/images/{i['sha256']}"} for i in chosen[:200]
            ],
        }
    )


async def feedback_image(request: Request) -> Response:
    if reviewer(request) is None:
        return refused_reviewer()
    sha = request.path_params["sha256"]
    try:
        check_sha256(sha)
    except LedgerError:
        return error(404, "No such kept image.")
    answer = await run_in_threadpool(kept_answer, _data_dir(request), sha)
    folder = images_dir(_data_dir(request)).resolve()
    path = (folder / answer["file"]).resolve() if answer else None
    if path is None or path.parent != folder:  # only files of the kept images' folder
        return error(404, "No such kept image.")
    return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


async def decide_feedback(request: Request) -> JSONResponse:
    who = reviewer(request)
    refusal = write_refusal(request, who)
    if refusal is not None:
        return refusal
    classes = _classes(request)
    if classes is None:
        return error(503, "No model is loaded yet: its classes are the ones to accept.")
    try:
        body = await json_body(request)
        verdict = await run_in_threadpool(
            review,
            _data_dir(request),
            who,
            str(body.get("id", "")),
            str(body.get("decision", "")),
            classes,
        )
    except LedgerError as exc:
        return error(400, str(exc))
    return JSONResponse(verdict, status_code=201)


def feedback_routes(settings: Settings) -> list[Route]:
    """``POST /feedback`` always; the review queue only with an admin token (as /review)."""
    routes = [Route("/feedback", give_feedback, methods=["POST"])]
    if settings.admin_token:
        routes += [
            Route("/review/api/feedback", feedback_queue, methods=["GET"]),
            Route("/review/api/feedback/images/{sha256}", feedback_image, methods=["GET"]),
            Route("/review/api/feedback/decisions", decide_feedback, methods=["POST"]),
        ]
    return routes
