"""Who may call the admin and review routes: the bearer-token check and the 401 answer.

One owner for both, so ``/admin/*`` and ``/review`` can never disagree on how a token is
compared or on what a refused request is told.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse

from serving.responses import error


def bearer_matches(request: Request, token: str) -> bool:
    """Whether the request's ``Authorization: Bearer`` header carries ``token``."""
    if not token:
        return False
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Header values arrive latin-1 decoded; compare the bytes, in constant time.
    return hmac.compare_digest(given.strip().encode("latin-1"), token.encode("utf-8"))


def unauthorized(message: str = "A valid admin bearer token is required.") -> JSONResponse:
    return error(401, message, headers={"WWW-Authenticate": "Bearer"})
