"""The two kinds of answer serving gives people and programs: a JSON error and an HTML page.

Errors are ``{"error": "...", ...}`` with a 4xx/5xx status, never a traceback or a path.
Pages are Jinja2 templates (``serving/templates/``, autoescaped) whose scripts and styles are
files under ``serving/static/``, so the Content-Security-Policy allows scripts and styles
from this server only (``'self'``) and nothing inline.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.templating import Jinja2Templates

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")


def error(
    status_code: int, message: str, headers: Mapping[str, str] | None = None, **extra: object
) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status_code, headers=headers)


def html_page(
    request: Request,
    template: str,
    context: dict | None = None,
    status_code: int = 200,
    img_src: str = "'self'",
    form_action: str = "'none'",
) -> HTMLResponse:
    """A template rendered under the strict policy every Ursa page has."""
    policy = (
        f"default-src 'none'; script-src 'self'; style-src 'self'; img-src {img_src}; "
        f"connect-src 'self'; base-uri 'none'; form-action {form_action}; "
        "frame-ancestors 'none'"
    )
    return templates.TemplateResponse(
        request,
        template,
        context or {},
        status_code=status_code,
        headers={
            "Content-Security-Policy": policy,
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        },
    )
