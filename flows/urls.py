"""collect_urls: search terms -> per-class URL lists (``<class>.txt``) and ``urls.csv``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.image_search import SearchOptions
from tasks.policies import HOUR
from tasks.urls import (
    CSV_NAME,
    STOCK_SITES,
    ClassReport,
    Pacing,
    Rules,
    class_reports,
    collect_class_task,
    publish_urls,
    short_classes,
)
from ursa.settings import Settings

# A conflict found by a later class can take a URL from a class filled earlier: a few rounds
# top such classes up again; each round searches only classes still short.
ROUNDS = 3


@dataclass
class UrlsResult:
    out: str
    csv: str
    reports: list[ClassReport]


@flow(name="collect_urls", log_prints=True, timeout_seconds=6 * HOUR)
def collect_urls(
    classes: dict[str, str],
    out: str = "urls",
    max_per_class: Annotated[int, Field(ge=1, le=10_000)] = 150,
    provider: str = "duckduckgo",
    min_width: Annotated[int, Field(ge=0)] = 0,
    min_height: Annotated[int, Field(ge=0)] = 0,
    block_stock_sites: bool = True,
    block_domains: list[str] | None = None,
    keep_conflicts: bool = False,
    region: str = "us-en",
    safesearch: str = "moderate",
    type_image: str = "",
    layout: str = "",
    proxy: str = "",
    interval_s: Annotated[float, Field(ge=1.0, le=600)] = 1.0,
    attempts: Annotated[int, Field(ge=1, le=10)] = 5,
    backoff_s: Annotated[float, Field(ge=1.0, le=600)] = 4.0,
) -> UrlsResult:
    """Search images for each class and write the URL lists that ingest reads.

    Resumable: a rerun into the same folder tops up classes short of max_per_class and
    leaves full ones alone.

    Args:
        classes: Class name -> search query, e.g. {"grizzly": "grizzly bear"}.
        out: Folder for <class>.txt, urls.csv and the resume state.
        max_per_class: URLs wanted per class.
        provider: Image search provider (duckduckgo, through the ddgs package).
        min_width: Leave out images the engine reports narrower than this (px).
        min_height: Leave out images the engine reports lower than this (px).
        block_stock_sites: Leave out stock-photo sites (watermarked previews).
        block_domains: More domains to leave out (subdomains included).
        keep_conflicts: Keep a URL found under two classes in both (default: in neither).
        region: Search region, e.g. us-en, uk-en, de-de, wt-wt (no region).
        safesearch: on, moderate or off.
        type_image: Engine filter: photo, clipart, gif, transparent or line (empty: any).
        layout: Engine filter: Square, Tall or Wide (empty: any).
        proxy: http://, https:// or socks5:// proxy for the searches (default: DDGS_PROXY).
        interval_s: Seconds between queries (at least 1: engines rate-limit quick ones).
        attempts: Tries per page after rate limits or timeouts, the first included.
        backoff_s: Wait after the first refusal; doubled after each, with jitter.
    """
    settings = Settings.from_env()
    options = SearchOptions(
        region=region,
        safesearch=safesearch,
        type_image=type_image,
        layout=layout,
        proxy=proxy or os.environ.get("DDGS_PROXY", ""),
        base_url=settings.search_url,
    )
    blocklist = (STOCK_SITES if block_stock_sites else ()) + tuple(block_domains or ())
    rules = Rules(min_width, min_height, blocklist, keep_conflicts)
    pacing = Pacing(interval_s=interval_s, attempts=attempts, backoff_s=backoff_s)
    folder = Path(out)
    reports: dict[str, ClassReport] = {}
    for _ in range(ROUNDS):
        todo = short_classes(folder, classes, max_per_class, rules)
        if not todo:
            break
        for label in todo:
            reports[label] = collect_class_task(
                provider,
                options,
                pacing,
                rules,
                out,
                label,
                classes[label],
                max_per_class,
                reports.get(label),
            )
    final = class_reports(folder, classes, max_per_class, reports)
    publish_urls(final)
    for r in final:
        print(f"urls: {r.label}: {r.collected} of {r.target} ({r.status}; {r.queries} queries)")
    return UrlsResult(
        out=str(folder.resolve()), csv=str((folder / CSV_NAME).resolve()), reports=final
    )
