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
import secrets
import urllib.parse
from dataclasses import asdict
from hashlib import sha256
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

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
from ursa.ranking import ORDERS, RankedImage, ordered, read_ranking
from ursa.settings import Settings

COOKIE = "ursa_review"
COOKIE_MAX_AGE_S = 12 * 3600
MAX_FORM_BYTES = 4096
MAX_JSON_BYTES = 4096
PER_PAGE_DEFAULT = 24
PER_PAGE_MAX = 200


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


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
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        # Header values arrive latin-1 decoded; compare the bytes, in constant time.
        if hmac.compare_digest(given.strip().encode("latin-1"), token.encode()):
            try:
                return check_who(request.headers.get("x-ursa-reviewer", "api"))
            except LedgerError:
                return None
        return None
    cookie = request.cookies.get(COOKIE)
    return _cookie_reviewer(cookie, token) if cookie else None


def _unauthorized() -> JSONResponse:
    return _error(
        401,
        "A valid admin bearer token (or a review login) is required.",
        **{"WWW-Authenticate": "Bearer"},
    )


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or request.headers.get("authorization"):
        return True
    return origin == f"{request.url.scheme}://{request.url.netloc}"


async def _json_body(request: Request) -> dict:
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


class RankingCache:
    """The ranking file, read again only when it changes (``ursa clean`` replaces it)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._key: tuple[int, int] | None = None
        self._value: tuple[list[RankedImage], dict] = ([], {})

    def get(self) -> tuple[list[RankedImage], dict]:
        path = self.data_dir / "cleaning" / "ranking.csv"
        stat = path.stat()  # FileNotFoundError: no ranking yet
        key = (stat.st_mtime_ns, stat.st_size)
        if key != self._key:
            self._value = read_ranking(self.data_dir)
            self._key = key
        return self._value


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
        return _unauthorized()
    try:
        return JSONResponse(await run_in_threadpool(_suspects_page, request))
    except FileNotFoundError:
        return _error(404, "No ranking yet: run 'ursa clean' (or the clean flow) first.")
    except LedgerError as exc:
        return _error(400, str(exc))


async def image(request: Request) -> Response:
    if reviewer(request) is None:
        return _unauthorized()
    sha = request.path_params["sha256"]
    try:
        check_sha256(sha)
        rows, _ = await run_in_threadpool(_ranking, request)
    except (LedgerError, FileNotFoundError):
        return _error(404, "No such image in the ranking.")
    found = next((r for r in rows if r.sha256 == sha), None)
    data_dir = _settings(request).data_dir.resolve()
    path = (data_dir / found.image_path).resolve() if found else None
    # Only images of the data folder's images/, whatever the ranking file says.
    if path is None or path.parent != data_dir / "images" or not path.is_file():
        return _error(404, "No such image in the ranking.")
    return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


def _write_refusal(request: Request, who: str | None) -> JSONResponse | None:
    """Why a request may not write to the ledger, or None when it may."""
    if who is None:
        return _unauthorized()
    if not _same_origin(request):
        return _error(403, "Cross-origin requests may not record decisions.")
    return None


async def decide(request: Request) -> JSONResponse:
    who = reviewer(request)
    refusal = _write_refusal(request, who)
    if refusal is not None:
        return refusal
    try:
        body = await _json_body(request)
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
        return _error(404, "No ranking yet: run 'ursa clean' (or the clean flow) first.")
    except LedgerError as exc:
        return _error(400, str(exc))
    return JSONResponse({**asdict(entry), "decision": entry.decision}, status_code=201)


async def undo_decision(request: Request) -> JSONResponse:
    who = reviewer(request)
    refusal = _write_refusal(request, who)
    if refusal is not None:
        return refusal
    try:
        body = await _json_body(request)
        entry_id = str(body.get("id", ""))
        if not (len(entry_id) == 32 and all(c in "0123456789abcdef" for c in entry_id)):
            raise LedgerError(f"Entry id '{entry_id[:40]}' is not a ledger entry id.")
        entry = await run_in_threadpool(
            undo, ledger_path(_settings(request).data_dir), who, entry_id
        )
    except LedgerError as exc:
        return _error(400, str(exc))
    return JSONResponse(asdict(entry), status_code=201)


async def ledger_csv(request: Request) -> Response:
    if reviewer(request) is None:
        return _unauthorized()
    try:
        entries = await run_in_threadpool(read_entries, ledger_path(_settings(request).data_dir))
    except LedgerError as exc:
        return _error(500, f"The ledger cannot be read: {exc}")
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
            return _page(LOGIN, 413, error="The form is too large.")
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    who = (form.get("name") or [""])[0].strip()
    given = (form.get("token") or [""])[0]
    token = _settings(request).admin_token
    try:
        check_who(who)
    except LedgerError as exc:
        return _page(LOGIN, 400, error=str(exc))
    if not hmac.compare_digest(given.encode(), token.encode()):
        return _page(LOGIN, 401, error="That is not the admin token.")
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
        return _page(LOGIN, 200)
    return _page(REVIEW, 200, who=who)


def _page(template: str, status: int, error: str = "", who: str = "") -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    )
    html = (
        template.replace("__NONCE__", nonce)
        .replace("__ERROR__", _escape(error))
        .replace("__WHO__", _escape(who))
    )
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Content-Security-Policy": policy,
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        },
    )


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


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


def _reply(description: str, ref: str = "Error") -> dict:
    schema = {"$ref": f"#/components/schemas/{ref}"} if ref else {"type": "object"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_paths() -> dict:
    """The review routes for ``/openapi.json`` (they exist only with an admin token)."""
    bearer = [{"bearer": []}]
    unauthorized = _reply("No admin bearer token and no review login.")
    decision = {
        "type": "object",
        "required": ["sha256", "decision"],
        "properties": {
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "decision": {"type": "string", "description": "keep, remove or relabel:<class>"},
        },
    }
    html = {"description": "An HTML page.", "content": {"text/html": {}}}
    see_other = {"description": "Back to /review."}
    return {
        "/review": {
            "get": {
                "summary": "The review page (a login form until logged in).",
                "responses": {"200": html},
            }
        },
        "/review/login": {
            "post": {
                "summary": "Log in with a name and the admin token; sets an HttpOnly cookie.",
                "requestBody": {
                    "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}
                },
                "responses": {"303": see_other, "400": html, "401": html, "413": html},
            }
        },
        "/review/logout": {
            "post": {"summary": "Forget the review login.", "responses": {"303": see_other}}
        },
        "/review/api/suspects": {
            "get": {
                "summary": "A page of the ranking, most suspect first, with the decisions.",
                "security": bearer,
                "parameters": [
                    {"name": n, "in": "query", "schema": {"type": t}}
                    for n, t in (
                        ("page", "integer"),
                        ("per_page", "integer"),
                        ("order", "string"),
                        ("flag", "string"),
                    )
                ],
                "responses": {
                    "200": _reply("The page of suspects.", ""),
                    "400": _reply("A bad query parameter."),
                    "401": unauthorized,
                    "404": _reply("No ranking yet."),
                },
            }
        },
        "/review/api/images/{sha256}": {
            "get": {
                "summary": "A ranked image, from the data folder.",
                "security": bearer,
                "parameters": [
                    {"name": "sha256", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "The image.", "content": {"image/*": {}}},
                    "401": unauthorized,
                    "404": _reply("Not an image of the ranking."),
                },
            }
        },
        "/review/api/decisions": {
            "post": {
                "summary": "Append a decision about an image to the cleaning ledger.",
                "security": bearer,
                "requestBody": {"content": {"application/json": {"schema": decision}}},
                "responses": {
                    "201": _reply("The ledger entry.", ""),
                    "400": _reply("A bad decision; nothing was written."),
                    "401": unauthorized,
                    "403": _reply("A cross-origin request."),
                },
            }
        },
        "/review/api/undo": {
            "post": {
                "summary": "Append the reversal of a ledger entry.",
                "security": bearer,
                "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {
                    "201": _reply("The undo entry.", ""),
                    "400": _reply("No such entry, or already undone."),
                    "401": unauthorized,
                    "403": _reply("A cross-origin request."),
                },
            }
        },
        "/review/api/ledger.csv": {
            "get": {
                "summary": "The cleaning ledger as CSV, one row per entry.",
                "security": bearer,
                "responses": {
                    "200": {"description": "CSV.", "content": {"text/csv": {}}},
                    "401": unauthorized,
                },
            }
        },
    }


_STYLE = """
  body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5rem auto; max-width: 72rem;
         padding: 0 1rem; color: #222; }
  h1 { font-size: 1.5rem; margin: 0 0 .3rem; }
  .muted { color: #666; }
  #error, .error { color: #b00; }
  form.login { display: grid; gap: .6rem; max-width: 22rem; }
  #bar { display: flex; flex-wrap: wrap; gap: .8rem; align-items: center; margin: .6rem 0; }
  #grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(13rem, 1fr));
          gap: .8rem; }
  .card { border: 2px solid #ddd; border-radius: 8px; padding: .5rem; }
  .card.selected { border-color: #26a; box-shadow: 0 0 0 3px #cde; }
  .card img { width: 100%; image-rendering: pixelated; background: #eee; aspect-ratio: 1; }
  .card .labels { font-size: .9rem; }
  .card .decision { font-weight: bold; min-height: 1.3em; }
  .card.keep { border-color: #2a6; } .card.remove { border-color: #b00; opacity: .6; }
  .card.relabel { border-color: #d80; }
  .flag { font-size: .75rem; background: #fe8; border-radius: 4px; padding: 0 .3rem;
          margin-right: .2rem; }
  .actions { display: flex; flex-wrap: wrap; gap: .3rem; margin-top: .3rem; }
  kbd { border: 1px solid #aaa; border-radius: 3px; padding: 0 .25rem; font-size: .8rem; }
"""

LOGIN = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ursa review: log in</title>
<style nonce="__NONCE__">"""
    + _STYLE
    + """</style></head>
<body>
<h1>Review suspect images</h1>
<p class="muted">Log in with your name (it goes into the cleaning ledger) and the admin token.</p>
<form class="login" method="post" action="/review/login">
  <label>Your name <input id="name" name="name" required maxlength="64"
    autocomplete="username"></label>
  <label>Admin token <input id="token" name="token" type="password" required
    autocomplete="current-password"></label>
  <button id="login" type="submit">Log in</button>
  <p class="error" role="alert">__ERROR__</p>
</form>
</body></html>
"""
)

REVIEW = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ursa review</title>
<style nonce="__NONCE__">"""
    + _STYLE
    + """</style></head>
<body>
<h1>Review suspect images</h1>
<p class="muted">Most likely mislabelled first (out-of-sample probabilities). Reviewing as
<b id="who">__WHO__</b>. <span id="summary"></span></p>
<div id="bar">
  <label>Order <select id="order">
    <option value="self_confidence">self-confidence (cleanlab)</option>
    <option value="margin">normalised margin</option>
    <option value="loss">loss (top losses)</option>
  </select></label>
  <label>Show <select id="flag">
    <option value="">all</option>
    <option value="confident_issue">confident issues</option>
    <option value="label_conflict">label conflicts</option>
    <option value="near_duplicates">with near-duplicates</option>
  </select></label>
  <button id="prev" type="button">&larr; previous</button>
  <span id="pageinfo"></span>
  <button id="next" type="button">next &rarr;</button>
  <a id="csv" href="/review/api/ledger.csv">ledger as CSV</a>
  <form method="post" action="/review/logout"><button type="submit">log out</button></form>
</div>
<p class="muted">Keys: <kbd>&larr;</kbd><kbd>&rarr;</kbd> select, <kbd>k</kbd> keep,
<kbd>x</kbd> remove, <kbd>r</kbd> relabel (pick the class, <kbd>Enter</kbd>),
<kbd>u</kbd> undo, <kbd>n</kbd>/<kbd>p</kbd> next/previous page.</p>
<p id="error" role="alert"></p>
<p id="status" role="status"></p>
<div id="grid"></div>
<script nonce="__NONCE__">
const $ = (id) => document.getElementById(id);
const BASE = "/review/";  // the page may be opened as /review or /review/
const state = {page: 1, pages: 1, selected: 0, items: [], classes: []};

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  const reply = await fetch(BASE + path, options);
  const data = await reply.json();
  if (!reply.ok) throw new Error(data.error || `HTTP ${reply.status}`);
  return data;
}

function text(tag, cls, content) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  el.textContent = content;
  return el;
}

function describe(card, item) {
  card.classList.remove("keep", "remove", "relabel");
  const d = item.decision;
  if (d) card.classList.add(d.split(":")[0]);
  card.querySelector(".decision").textContent = d
    ? `decided: ${d.replace(":", " to ")} (${item.decided_by})` : "";
  card.querySelector(".undo").disabled = !item.decision_id;
}

function render() {
  const grid = $("grid");
  grid.replaceChildren();
  state.items.forEach((item, i) => {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.sha256 = item.sha256;
    card.dataset.given = item.given;
    card.dataset.index = i;
    const img = document.createElement("img");
    img.src = BASE + item.image_url;
    img.alt = `image ${item.sha256.slice(0, 12)}`;
    card.append(img);
    const labels = document.createElement("div");
    labels.className = "labels";
    labels.append(
      text("div", "rank", `#${item.rank}`),
      text("div", "given", `given: ${item.given}`),
      text("div", "predicted",
           `predicted: ${item.predicted} (${(100 * item.confidence).toFixed(1)}%)`),
      text("div", "selfconf", `p(given): ${(100 * item.self_confidence).toFixed(1)}%`),
    );
    const flags = document.createElement("div");
    for (const f of item.flags.split(";").filter(Boolean)) flags.append(text("span", "flag", f));
    labels.append(flags);
    card.append(labels, text("div", "decision", ""));
    const actions = document.createElement("div");
    actions.className = "actions";
    const keep = text("button", "keep", "keep");
    keep.type = "button";
    keep.addEventListener("click", () => decide(i, "keep"));
    const remove = text("button", "remove", "remove");
    remove.type = "button";
    remove.addEventListener("click", () => decide(i, "remove"));
    const choose = document.createElement("select");
    choose.className = "relabel-to";
    choose.setAttribute("aria-label", "relabel to");
    for (const c of state.classes) {
      const option = text("option", "", c);
      option.value = c;
      choose.append(option);
    }
    choose.value = item.predicted;
    choose.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); decide(i, `relabel:${choose.value}`); }
      e.stopPropagation();
    });
    const relabel = text("button", "relabel", "relabel");
    relabel.type = "button";
    relabel.addEventListener("click", () => decide(i, `relabel:${choose.value}`));
    const undoButton = text("button", "undo", "undo");
    undoButton.type = "button";
    undoButton.addEventListener("click", () => undoDecision(i));
    actions.append(keep, remove, choose, relabel, undoButton);
    card.append(actions);
    card.addEventListener("click", (e) => {
      if (e.target === card || e.target === img) select(i);
    });
    grid.append(card);
    describe(card, item);
  });
  select(Math.min(state.selected, state.items.length - 1));
}

function cards() { return $("grid").querySelectorAll(".card"); }

function select(i) {
  const all = cards();
  if (!all.length) return;
  state.selected = Math.max(0, Math.min(i, all.length - 1));
  all.forEach((c, k) => c.classList.toggle("selected", k === state.selected));
  all[state.selected].scrollIntoView({block: "nearest"});
}

async function load(page) {
  $("error").textContent = "";
  const query = new URLSearchParams({
    page: String(page), order: $("order").value, flag: $("flag").value,
  });
  try {
    const data = await api(`api/suspects?${query}`);
    Object.assign(state, {page: data.page, pages: data.pages, items: data.items,
                          classes: data.classes});
    $("pageinfo").textContent = `page ${data.page} of ${data.pages}`;
    $("summary").textContent =
      `${data.total} images, ${data.decided} decided; dataset ${data.dataset_digest.slice(0, 12)}.`;
    $("prev").disabled = data.page <= 1;
    $("next").disabled = data.page >= data.pages;
    render();
  } catch (err) {
    $("error").textContent = err.message;
  }
}

async function decide(i, decision) {
  const item = state.items[i];
  if (!item) return;
  $("error").textContent = "";
  try {
    const entry = await api("api/decisions", {sha256: item.sha256, decision});
    for (const [k, other] of state.items.entries()) {  // a label conflict shows twice
      if (other.sha256 !== item.sha256) continue;
      Object.assign(other, {decision: entry.decision, decision_id: entry.id,
                            decided_by: entry.who});
      describe(cards()[k], other);
    }
    $("status").textContent = `#${item.rank}: ${entry.decision}`;
    select(i + 1);
  } catch (err) {
    $("error").textContent = err.message;
  }
}

async function undoDecision(i) {
  const item = state.items[i];
  if (!item || !item.decision_id) return;
  try {
    await api("api/undo", {id: item.decision_id});
    await load(state.page);  // an earlier decision about the image may stand again
    select(i);
    $("status").textContent = `#${item.rank}: undone`;
  } catch (err) {
    $("error").textContent = err.message;
  }
}

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "SELECT" || e.target.tagName === "INPUT") return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const i = state.selected;
  const actions = {
    ArrowRight: () => select(i + 1), ArrowLeft: () => select(i - 1),
    l: () => select(i + 1), h: () => select(i - 1),
    k: () => decide(i, "keep"), x: () => decide(i, "remove"), Delete: () => decide(i, "remove"),
    r: () => cards()[i] && cards()[i].querySelector(".relabel-to").focus(),
    u: () => undoDecision(i),
    n: () => state.page < state.pages && load(state.page + 1),
    p: () => state.page > 1 && load(state.page - 1),
  };
  if (actions[e.key]) { e.preventDefault(); actions[e.key](); }
});
$("prev").addEventListener("click", () => load(state.page - 1));
$("next").addEventListener("click", () => load(state.page + 1));
$("order").addEventListener("change", () => load(1));
$("flag").addEventListener("change", () => load(1));
load(1);
</script>
</body></html>
"""
)
