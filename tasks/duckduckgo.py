"""DuckDuckGo image search through the ``ddgs`` package's own engine and HTTP client.

The query goes through ddgs's ``DuckduckgoImages`` engine (its ``vqd`` token fetch, payload,
filters, JSON parsing and result normalisation) and its ``primp`` HTTP client, not through
the ``DDGS().images`` front: in ddgs 9.x that front turns every non-200 answer into "No
results found" (a rate limit looks like the end of the results) and re-ranks the hits by
words in their titles (the engine's rank order is lost). Here a thin client subclass looks
at each answer's status before the engine does and raises by kind, and reads the page's
``next`` link; with ``base_url`` set it sends the requests there instead of
``https://duckduckgo.com`` (a mirror, or Ursa's local stand-in in tests and benchmarks).
"""

from __future__ import annotations

import json
from typing import Any

from ddgs.engines.duckduckgo_images import DuckduckgoImages
from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException
from ddgs.http_client import HttpClient, Response

from tasks.image_search import (
    ImageHit,
    RateLimited,
    SearchError,
    SearchOptions,
    SearchPage,
    SearchUnavailable,
)

DUCKDUCKGO = "https://duckduckgo.com"
# What DuckDuckGo answers when it has had enough of an address: 202 with an error page for
# the token, 403 for i.js; 429 is the standard status for the same thing.
RATE_LIMIT_STATUSES = (202, 403, 429)


class _CheckedClient(HttpClient):
    """ddgs's HTTP client, with the host replaced and every answer's status checked."""

    def __init__(self, options: SearchOptions) -> None:
        super().__init__(proxy=options.proxy or None, timeout=int(max(1, options.timeout_s)))
        self.base_url = options.base_url.rstrip("/")
        self.last_body = ""

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:  # noqa: ANN401
        if self.base_url and url.startswith(DUCKDUCKGO):
            url = self.base_url + url[len(DUCKDUCKGO) :]
        response = super().request(method, url, *args, **kwargs)
        status = response.status_code
        if status in RATE_LIMIT_STATUSES:
            raise RatelimitException(f"HTTP {status} from {url}")
        if status >= 500:
            raise SearchUnavailable(f"HTTP {status} from {url}")
        if status != 200:
            raise DDGSException(f"HTTP {status} from {url}")
        self.last_body = response.text
        return response


class DuckDuckGoImages:
    name = "duckduckgo"

    def __init__(self, options: SearchOptions) -> None:
        self.options = options
        self.engine = DuckduckgoImages()
        self.client = _CheckedClient(options)
        self.client.client.headers_update(DuckduckgoImages.headers_update)
        self.engine.http_client = self.client

    def page(self, query: str, number: int) -> SearchPage:
        o = self.options
        filters = {
            k: v
            for k, v in {
                "size": o.size,
                "type_image": o.type_image,
                "layout": o.layout,
                "license_image": o.license_image,
                **o.extra,
            }.items()
            if v
        }
        self.client.last_body = ""
        try:
            results = self.engine.search(
                query, region=o.region, safesearch=o.safesearch, page=number, **filters
            )
        except RatelimitException as exc:
            raise RateLimited(str(exc)) from exc
        except TimeoutException as exc:
            raise SearchUnavailable(f"timed out: {exc}") from exc
        except DDGSException as exc:
            # primp's connection errors arrive wrapped in DDGSException: a dead network or
            # proxy is worth a pause and another try; anything else is not.
            if "connect" in str(exc).lower():
                raise SearchUnavailable(str(exc)) from exc
            raise SearchError(str(exc)) from exc
        hits = [_hit(r) for r in results or [] if getattr(r, "image", "")]
        return SearchPage(hits=hits, more=bool(hits) and _has_next(self.client.last_body))


def _hit(result: Any) -> ImageHit:  # noqa: ANN401
    return ImageHit(
        url=result.image,
        title=result.title or "",
        source_page=result.url or "",
        width=_int(result.width),
        height=_int(result.height),
    )


def _int(value: object) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _has_next(body: str) -> bool:
    try:
        return bool(json.loads(body).get("next"))
    except (ValueError, AttributeError):
        return False
