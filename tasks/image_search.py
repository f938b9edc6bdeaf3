"""What an image search provider is to Ursa: one page of hits per call, and errors by kind.

``collect_urls`` only talks to this interface, so another source (a paid search API, a
company's own index) is one small class with a ``page`` method, added to :data:`PROVIDERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ImageHit:
    """One search result: the image's URL and what the search engine says about it."""

    url: str
    title: str = ""
    source_page: str = ""  # the page the image appears on
    width: int = 0  # as the engine reports it; 0 when it does not say
    height: int = 0


@dataclass(frozen=True)
class SearchPage:
    hits: list[ImageHit]
    more: bool  # the engine offers a next page for this query


@dataclass(frozen=True)
class SearchOptions:
    """The engine-side filters and the connection: the same for every query of a run."""

    region: str = "us-en"
    safesearch: str = "moderate"  # on, moderate, off
    size: str = ""  # Small, Medium, Large, Wallpaper
    type_image: str = ""  # photo, clipart, gif, transparent, line
    layout: str = ""  # Square, Tall, Wide
    license_image: str = ""  # any, Public, Share, ShareCommercially, Modify, ModifyCommercially
    proxy: str = ""  # http://, https:// or socks5:// URL; empty: none
    timeout_s: float = 10.0
    base_url: str = ""  # replaces the engine's host (a mirror, or a local stand-in)
    extra: dict[str, str] = field(default_factory=dict)


class SearchError(Exception):
    """The engine refused the query for a reason that waiting will not fix."""


class RateLimited(Exception):
    """The engine answered with a rate limit (HTTP 202/403/429): slow down, or change address."""


class SearchUnavailable(Exception):
    """A timeout or a server error: often heals after a pause."""


class ImageSearch(Protocol):
    name: str

    def page(self, query: str, number: int) -> SearchPage:
        """Page ``number`` (1-based) of the results for ``query``, in the engine's rank order.

        Raises :class:`RateLimited`, :class:`SearchUnavailable` or :class:`SearchError`.
        """
        ...


def _duckduckgo(options: SearchOptions) -> ImageSearch:
    from tasks.duckduckgo import DuckDuckGoImages

    return DuckDuckGoImages(options)


# Provider name -> factory. Imports are deferred so that a provider's library is only needed
# when it is used.
PROVIDERS: dict[str, Callable[[SearchOptions], ImageSearch]] = {"duckduckgo": _duckduckgo}


def image_search(name: str, options: SearchOptions) -> ImageSearch:
    """The provider called ``name``, configured with ``options``."""
    if name not in PROVIDERS:
        raise ValueError(f"Unknown image search provider '{name}'; known: {sorted(PROVIDERS)}.")
    return PROVIDERS[name](options)
