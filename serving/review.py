"""``/review``: people look at the images most likely mislabelled and decide, in the browser.

A grid of suspects from the ranking file (``ursa clean`` writes it) with the given label, the
predicted label and the confidence; for each: keep, relabel (pick the class) or remove, by
button or keyboard; paging. Decisions are appended to the cleaning ledger
(:mod:`ursa.ledger`), which the next ingest applies.

Access is the admin token's, two ways:

- **API** (``/review/api/*``): ``Authorization: Bearer <token>``; the reviewer's name comes
  from the ``X-Ursa-Reviewer`` header (default ``api``).
- **Browser** (``/review``): a login form takes a name and the token once and sets an
  ``HttpOnly; SameSite=Strict`` cookie scoped to ``/review`` that holds the name and an HMAC
  of it keyed by the token, never the token itself. Chosen over a ``?token=`` link because a
  token in a URL ends up in browser history, server logs and Referer headers, and because the
  page's scripts cannot read an HttpOnly cookie. Against cross-site requests: SameSite=Strict,
  writes accept only ``application/json`` (which a cross-site form cannot send), and a
  foreign ``Origin`` is refused. Changing the token logs everybody out.

Without an admin token configured, none of these routes exist (as for ``/admin/*``).
"""

from __future__ import annotations

import base64
import hmac
import json
import math
import urllib.parse
from dataclasses import asdict
from hashlib import sha256

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from serving.auth import bearer_matches, unauthorized
from serving.responses import error, html_page
from ursa.layout import Layout
from ursa.ledger import (
    LedgerError,
    check_sha256,
    check_who,
    effective,
    entries_csv,
    ledger_path,
    read_entries,
    record,
    undo,
)
from ursa.ranking import ORDERS, RankedImage, RankingCache, ordered
from ursa.settings import Settings

COOKIE = "ursa_review"
COOKIE_MAX_AGE_S = 12 * 3600
MAX_FORM_BYTES = 4096
MAX_JSON_BYTES = 4096
PER_PAGE_DEFAULT = 24
PER_PAGE_MAX = 200


def _settings(request: Request) -> Settings:
    return request.app.state.settings


# --- who is asking ------------------------------------------------------------------------


def _signature(token: str, who: str) -> str:
    return hmac.new(token.encode(), f"ursa-review:{who}".encode(), sha256).hexdigest()


def session_cookie(token: str, who: str) -> str:
    """``<name, base64url>.<hmac>``: proves the holder knew the token when logging in."""
    name = base64.urlsafe_b64encode(who.encode()).decode().rstrip("=")
    return f"{name}.{_signature(token, who)}"


def _cookie_reviewer(value: str, token: str) -> str | None:
    name, _, signature = value.partition(".")
    try:
        who = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    if hmac.compare_digest(signature.encode(), _signature(token, who).encode()):
        return who
    return None


def reviewer(request: Request) -> str | None:
    """The reviewer's name when the request carries the admin token (bearer or session
    cookie), else None."""
    token = _settings(request).admin_token
    if not token:
        return None
    if request.headers.get("authorization", "").partition(" ")[0].lower() == "bearer":
        if not bearer_matches(request, token):
            return None
        try:
            return check_who(request.headers.get("x-ursa-reviewer", "api"))
        except LedgerError:
            return None
    cookie = request.cookies.get(COOKIE)
    return _cookie_reviewer(cookie, token) if cookie else None


def refused_reviewer() -> JSONResponse:
    return unauthorized("A valid admin bearer token (or a review login) is required.")


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or request.headers.get("authorization"):
        return True
    return origin == f"{request.url.scheme}://{request.url.netloc}"


async def json_body(request: Request) -> dict:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise LedgerError("Send the decision as application/json.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise LedgerError(f"Request body over {MAX_JSON_BYTES} bytes.")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise LedgerError(f"Request body is not JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise LedgerError("Request body must be a JSON object.")
    return data


# --- the ranking -----------------------------------------------------------------------------


def _ranking(request: Request) -> tuple[list[RankedImage], dict]:
    state = request.app.state
    cache: RankingCache | None = getattr(state, "review_ranking", None)
    if cache is None:  # one per app, made on first use
        cache = state.review_ranking = RankingCache(_settings(request).data_dir)
    return cache.get()


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not lo <= int(raw) <= hi:
        raise LedgerError(f"Query parameter {name} must be an integer from {lo} to {hi}.")
    return int(raw)


def _suspects_page(request: Request) -> dict:
    rows, meta = _ranking(request)
    order = request.query_params.get("order", "self_confidence")
    if order not in ORDERS:
        raise LedgerError(f"Query parameter order must be one of {', '.join(ORDERS)}.")
    flag = request.query_params.get("flag", "")
    per_page = _int_param(request, "per_page", PER_PAGE_DEFAULT, 1, PER_PAGE_MAX)
    chosen = [r for r in ordered(rows, order) if not flag or flag in r.flags.split(";")]
    pages = max(1, math.ceil(len(chosen) / per_page))
    page = _int_param(request, "page", 1, 1, pages)
    decisions = effective(read_entries(ledger_path(_settings(request).data_dir)))
    items = []
    for r in chosen[(page - 1) * per_page : page * per_page]:
        decided = decisions.get(r.sha256)
        items.append(
            {
                **asdict(r),
                "image_url": f"api/images/{r.sha256}",
                "decision": decided.decision if decided else None,
                "decision_id": decided.id if decided else None,
                "decided_by": decided.who if decided else None,
            }
        )
    return {
        "page": page,
        "pages": pages,
        "per_page": per_page,
        "total": len(chosen),
        "order": order,
        "flag": flag,
        "classes": meta.get("classes") or sorted({r.given for r in rows}),
        "dataset_digest": meta.get("dataset_digest", ""),
        "method": meta.get("method", ""),
        "decided": len(decisions),
        "items": items,
    }


# --- endpoints -------------------------------------------------------------------------------


async def suspects(request: Request) -> JSONResponse:
    if reviewer(request) is None:
        return refused_reviewer()
    try:
        return JSONResponse(await run_in_threadpool(_suspects_page, request))
    except FileNotFoundError:
        return error(404, "No ranking yet: run 'ursa clean' (or the clean flow) first.")
    except LedgerError as exc:
        return error(400, str(exc))


async def image(request: Request) -> Response:
    if reviewer(request) is None:
        return refused_reviewer()
    sha = request.path_params["sha256"]
    try:
        check_sha256(sha)
        rows, _ = await run_in_threadpool(_ranking, request)
    except (LedgerError, FileNotFoundError):
        return error(404, "No such image in the ranking.")
    found = next((r for r in rows if r.sha256 == sha), None)
    data_dir = _settings(request).data_dir.resolve()
    path = (data_dir / found.image_path).resolve() if found else None
    # Only images of the data folder's images/, whatever the ranking file says.
    if path is None or path.parent != Layout(data_dir).images or not path.is_file():
        return error(404, "No such image in the ranking.")
    return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


def write_refusal(request: Request, who: str | None) -> JSONResponse | None:
    """Why a request may not write to the ledger, or None when it may."""
    if who is None:
        return refused_reviewer()
    if not _same_origin(request):
        return error(403, "Cross-origin requests may not record decisions.")
    return None


async def decide(request: Request) -> JSONResponse:
    who = reviewer(request)
    refusal = write_refusal(request, who)
    if refusal is not None:
        return refusal
    try:
        body = await json_body(request)
        sha = check_sha256(str(body.get("sha256", "")))
        rows, meta = await run_in_threadpool(_ranking, request)
        shown = [r for r in rows if r.sha256 == sha]
        if not shown:
            raise LedgerError(f"Image {sha} is not in the ranking.")
        classes = meta.get("classes") or sorted({r.given for r in rows})
        note = f"given {shown[0].given}, predicted {shown[0].predicted}"
        entry = await run_in_threadpool(
            record,
            ledger_path(_settings(request).data_dir),
            who,
            sha,
            str(body.get("decision", "")),
            classes,
            note,
        )
    except FileNotFoundError:
        return error(404, "No ranking yet: run 'ursa clean' (or the clean flow) first.")
    except LedgerError as exc:
        return error(400, str(exc))
    return JSONResponse({**asdict(entry), "decision": entry.decision}, status_code=201)


async def undo_decision(request: Request) -> JSONResponse:
    who = reviewer(request)
    refusal = write_refusal(request, who)
    if refusal is not None:
        return refusal
    try:
        body = await json_body(request)
        entry_id = str(body.get("id", ""))
        if not (len(entry_id) == 32 and all(c in "0123456789abcdef" for c in entry_id)):
            raise LedgerError(f"Entry id '{entry_id[:40]}' is not a ledger entry id.")
        entry = await run_in_threadpool(
            undo, ledger_path(_settings(request).data_dir), who, entry_id
        )
    except LedgerError as exc:
        return error(400, str(exc))
    return JSONResponse(asdict(entry), status_code=201)


async def ledger_csv(request: Request) -> Response:
    if reviewer(request) is None:
        return refused_reviewer()
    try:
        entries = await run_in_threadpool(read_entries, ledger_path(_settings(request).data_dir))
    except LedgerError as exc:
        return error(500, f"The ledger cannot be read: {exc}")
    return Response(
        entries_csv(entries),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="ledger.csv"'},
    )


async def login(request: Request) -> Response:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return _page(request, "review_login.html", 413, error="The form is too large.")
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    who = (form.get("name") or [""])[0].strip()
    given = (form.get("token") or [""])[0]
    token = _settings(request).admin_token
    try:
        check_who(who)
    except LedgerError as exc:
        return _page(request, "review_login.html", 400, error=str(exc))
    if not hmac.compare_digest(given.encode(), token.encode()):
        return _page(request, "review_login.html", 401, error="That is not the admin token.")
    response = RedirectResponse("/review", status_code=303)
    response.set_cookie(
        COOKIE,
        session_cookie(token, who),
        max_age=COOKIE_MAX_AGE_S,
        path="/review",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/review", status_code=303)
    response.delete_cookie(COOKIE, path="/review")
    return response


async def review_page(request: Request) -> Response:
    who = reviewer(request)
    if who is None:
        return _page(request, "review_login.html", 200)
    return _page(request, "review.html", 200, who=who)


def _page(request: Request, template: str, status: int, error: str = "", who: str = "") -> Response:
    return html_page(request, template, {"error": error, "who": who}, status, form_action="'self'")


def review_routes(settings: Settings) -> list[Route]:
    """The review page and its API; none when no admin token is configured."""
    if not settings.admin_token:
        return []
    return [
        Route("/review", review_page, methods=["GET"]),
        Route("/review/login", login, methods=["POST"]),
        Route("/review/logout", logout, methods=["POST"]),
        Route("/review/api/suspects", suspects, methods=["GET"]),
        Route("/review/api/images/{sha256}", image, methods=["GET"]),
        Route("/review/api/decisions", decide, methods=["POST"]),
        Route("/review/api/undo", undo_decision, methods=["POST"]),
        Route("/review/api/ledger.csv", ledger_csv, methods=["GET"]),
    ]
