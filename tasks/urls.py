"""URL lists from an image search: the ``<class>.txt`` files that ingest reads, and ``urls.csv``.

What users of image-search scrapers run into shaped this module: engines rate-limit after a
few quick queries, later pages come back empty, retry loops never end, the same image comes
back on several pages and under several classes, and stock-photo sites fill the results with
watermarks. So:

- one query at least every ``interval_s`` (1 s) per process: an engine limits an address,
  not a class (:func:`pacer_for`);
- a rate limit or timeout is retried after an exponential wait with jitter, a bounded number
  of times; then :class:`SearchGaveUp` says what happened and what to do. Other errors are
  raised as they are, never swallowed;
- when one query's pages run out, the next variant of it is searched (:func:`query_variants`);
- hits are kept in the order found, once each; a URL found under two classes is left out of
  both (and reported) unless ``keep_conflicts``; the width/height the engine reports and a
  domain blocklist (stock-photo sites by default) filter the rest;
- everything is saved after every page (``urls.csv``, the lists and ``.urls-state.json`` with
  each query variant's next page): a rerun tops up classes short of their target and leaves
  full ones alone.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from prefect import task
from prefect.artifacts import create_table_artifact

from tasks.image_search import (
    ImageSearch,
    RateLimited,
    SearchOptions,
    SearchPage,
    SearchUnavailable,
    image_search,
)
from tasks.manifest import read_rows, write_rows
from tasks.policies import CPU
from tasks.progress import progress
from ursa.files import atomic_write_text

CSV_NAME = "urls.csv"
STATE_NAME = ".urls-state.json"  # hidden, and no .csv/.txt: ingest never reads it as a list
# Sites whose search hits are watermarked previews: useless as training data.
STOCK_SITES = (
    "shutterstock.com",
    "istockphoto.com",
    "gettyimages.com",
    "gettyimages.co.uk",
    "gettyimages.ca",
    "gettyimages.com.au",
    "gettyimages.de",
    "alamy.com",
    "dreamstime.com",
    "depositphotos.com",
    "123rf.com",
    "stock.adobe.com",
    "ftcdn.net",  # Adobe Stock's image host
    "bigstockphoto.com",
    "canstockphoto.com",
    "agefotostock.com",
    "pond5.com",
    "vectorstock.com",
    "fotosearch.com",
    "masterfile.com",
    "superstock.com",
    "colourbox.com",
)
# Words appended to a query when its own pages run out (the plain query comes first).
VARIANT_WORDS = ("photo", "picture", "image", "close up", "high resolution", "photography")


@dataclass
class UrlRecord:
    """One collected URL: a row of ``urls.csv`` (``label`` is the class, as everywhere in Ursa,
    so that ``ursa ingest`` reads this CSV as readily as the ``<class>.txt`` lists)."""

    label: str
    url: str
    query: str = ""
    provider: str = ""
    rank: int = 0  # position in the results of ``query``, from 1
    title: str = ""
    source_page: str = ""
    width: int = 0
    height: int = 0
    time: str = ""  # when it was found, UTC


@dataclass(frozen=True)
class Rules:
    """Which hits are kept."""

    min_width: int = 0
    min_height: int = 0
    blocklist: tuple[str, ...] = STOCK_SITES
    keep_conflicts: bool = False
    max_pages: int = 5  # per query variant


@dataclass(frozen=True)
class Pacing:
    interval_s: float = 1.0  # between queries
    attempts: int = 5  # tries per page, the first included
    backoff_s: float = 4.0  # wait after the first failure; doubled each time, with jitter
    max_backoff_s: float = 120.0


@dataclass
class ClassReport:
    label: str
    query: str
    target: int
    collected: int = 0
    status: str = ""  # full | short (every query variant ran out)
    queries: int = 0  # pages requested this run
    new: int = 0
    duplicates: int = 0
    blocked: int = 0
    too_small: int = 0
    conflicts: list[str] = field(default_factory=list)


class SearchGaveUp(RuntimeError):
    """The engine kept refusing: what happened, and what to do about it, in the message."""


# -- state on disk ------------------------------------------------------------------------


@dataclass
class Collection:
    """Everything collected into one folder so far: the records, where each query variant's
    next page is, and the URLs left out for being found under two classes."""

    out: Path
    records: list[UrlRecord] = field(default_factory=list)
    cursors: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # label -> variant
    # -> [next page to read (0: no more), results on the pages before it]
    excluded: dict[str, str] = field(default_factory=dict)  # url -> why

    def count(self, label: str) -> int:
        return sum(1 for r in self.records if r.label == label)

    def owners(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for r in self.records:
            found.setdefault(r.url, set()).add(r.label)
        return found


def load_collection(out: Path) -> Collection:
    out = Path(out)
    records = read_rows(out / CSV_NAME, UrlRecord) if (out / CSV_NAME).exists() else []
    for r in records:  # read_rows leaves empty numbers as None
        r.rank, r.width, r.height = r.rank or 0, r.width or 0, r.height or 0
    state = json.loads((out / STATE_NAME).read_text()) if (out / STATE_NAME).exists() else {}
    return Collection(out, records, state.get("cursors", {}), state.get("excluded", {}))


def save_collection(c: Collection) -> None:
    """Lists, CSV and state, each written atomically (a kill leaves the previous page's)."""
    c.out.mkdir(parents=True, exist_ok=True)
    for label in sorted({r.label for r in c.records} | set(c.cursors)):
        urls = [r.url for r in c.records if r.label == label]
        atomic_write_text(c.out / f"{label}.txt", "".join(f"{u}\n" for u in urls))
    write_rows(c.out / CSV_NAME, c.records, UrlRecord)
    state = {"cursors": c.cursors, "excluded": c.excluded}
    atomic_write_text(c.out / STATE_NAME, json.dumps(state, indent=1, sort_keys=True))


# -- pacing and retries --------------------------------------------------------------------


class Pacer:
    """Spaces queries ``interval_s`` apart and retries refused ones with growing waits."""

    def __init__(
        self,
        pacing: Pacing,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.pacing = pacing
        self.sleep, self.clock = sleep, clock
        self.rng = rng or random.Random()
        self._last = -float("inf")
        self._lock = threading.Lock()

    def page(self, search: ImageSearch, query: str, number: int) -> SearchPage:
        p = self.pacing
        waited = 0.0
        for attempt in range(1, p.attempts + 1):
            with self._lock:
                gap = self._last + p.interval_s - self.clock()
                if gap > 0:
                    self.sleep(gap)
                self._last = self.clock()
            try:
                return search.page(query, number)
            except (RateLimited, SearchUnavailable) as exc:
                last = exc
                if attempt == p.attempts:
                    break
                # Full doubling with jitter (50-150%): clients refused together do not come
                # back together.
                delay = min(p.max_backoff_s, p.backoff_s * 2 ** (attempt - 1))
                delay *= 0.5 + self.rng.random()
                print(
                    f"urls: {search.name} refused '{query}' page {number} ({exc}); "
                    f"try {attempt + 1} of {p.attempts} in {delay:.0f} s"
                )
                self.sleep(delay)
                waited += delay
        raise SearchGaveUp(_gave_up(search.name, query, number, p.attempts, waited, last)) from last


def _gave_up(name: str, query: str, page: int, attempts: int, waited: float, exc: Exception) -> str:
    if isinstance(exc, RateLimited):
        what = (
            f"{name} rate-limited this address: {attempts} tries at '{query}' page {page} "
            f"were refused ({exc}), over {waited:.0f} s of waiting."
        )
        todo = (
            "Wait (15-60 minutes usually lifts it) and run the same command again: it resumes, "
            "topping up the classes still short and leaving full ones alone. Or search through "
            "a proxy (--proxy URL or the DDGS_PROXY variable; http, https and socks5 work), or "
            "ask for fewer URLs (--max)."
        )
    else:
        what = (
            f"{name} did not answer: {attempts} tries at '{query}' page {page} failed ({exc}), "
            f"over {waited:.0f} s of waiting."
        )
        todo = (
            "Check the network (and the proxy, if you use one), then run the same command "
            "again: it resumes where it stopped."
        )
    return f"{what} What has been collected so far is saved. {todo}"


_PACERS: dict[str, Pacer] = {}
_PACERS_LOCK = threading.Lock()


def pacer_for(provider: str, pacing: Pacing) -> Pacer:
    """One pacer per provider and process: an engine limits an address, whatever the class."""
    with _PACERS_LOCK:
        pacer = _PACERS.get(provider)
        if pacer is None or pacer.pacing != pacing:
            pacer = _PACERS[provider] = Pacer(pacing)
        return pacer


# -- collecting ------------------------------------------------------------------------------


def query_variants(query: str) -> list[str]:
    """The query, then the same query with words that find more of the same pictures."""
    return [query] + [f"{query} {w}" for w in VARIANT_WORDS if w not in query.lower()]


def blocked_by(url: str, blocklist: tuple[str, ...]) -> str:
    """The blocklist entry that ``url``'s host falls under, or ""."""
    host = (urlsplit(url).hostname or "").lower()
    return next((d for d in blocklist if host == d or host.endswith("." + d)), "")


def collect_class(
    search: ImageSearch,
    pacer: Pacer,
    c: Collection,
    label: str,
    query: str,
    target: int,
    rules: Rules = Rules(),
    tick: Callable[[object], None] = lambda _: None,
    report: ClassReport | None = None,
) -> ClassReport:
    """Search ``query`` (and its variants) until ``label`` holds ``target`` URLs or every
    variant ran out; saves ``c`` after each page. Counts add to ``report`` when given."""
    report = report or ClassReport(label, query, target)
    cursors = c.cursors.setdefault(label, {})
    for variant in query_variants(query):
        cursor = cursors.setdefault(variant, [1, 0])
        while 0 < cursor[0] <= rules.max_pages and c.count(label) < target:
            page = pacer.page(search, variant, cursor[0])
            report.queries += 1
            owners, have = c.owners(), c.count(label)
            read_all = True
            for i, hit in enumerate(page.hits, start=cursor[1] + 1):
                if have >= target:
                    read_all = False  # a top-up reads this page again, from its first hit
                    break
                if _kept(c, owners, report, hit, variant, i, search.name, rules):
                    have += 1
                    tick(hit.url)
            if read_all:
                cursor[1] += len(page.hits)
                cursor[0] = cursor[0] + 1 if page.more and page.hits else 0
            save_collection(c)
        if c.count(label) >= target:
            break
    report.collected = c.count(label)
    report.status = "full" if report.collected >= target else "short"
    return report


def _kept(c, owners, report, hit, query, rank, provider, rules) -> bool:  # noqa: ANN001
    """Whether ``hit`` joins ``report.label``'s list (``c`` and ``owners`` updated)."""
    url = hit.url
    if urlsplit(url).scheme not in ("http", "https") or url in c.excluded:
        return False
    found_under = owners.get(url, set())
    if report.label in found_under:
        report.duplicates += 1
        return False
    if blocked_by(url, rules.blocklist) or blocked_by(hit.source_page, rules.blocklist):
        report.blocked += 1
        return False
    known = hit.width and hit.height
    if known and (hit.width < rules.min_width or hit.height < rules.min_height):
        report.too_small += 1
        return False
    if found_under and not rules.keep_conflicts:
        # Found under two classes: which one it shows is anyone's guess, so neither keeps it.
        c.excluded[url] = f"found under {', '.join(sorted(found_under | {report.label}))}"
        c.records = [r for r in c.records if r.url != url]
        del owners[url]
        report.conflicts.append(url)
        print(f"urls: {url} {c.excluded[url]}: left out of both")
        return False
    c.records.append(
        UrlRecord(
            label=report.label,
            url=url,
            query=query,
            provider=provider,
            rank=rank,
            title=hit.title,
            source_page=hit.source_page,
            width=hit.width,
            height=hit.height,
            time=datetime.now(UTC).isoformat(timespec="seconds"),
        )
    )
    owners.setdefault(url, set()).add(report.label)
    report.new += 1
    return True


def short_classes(out: Path, classes: dict[str, str], target: int, rules: Rules) -> list[str]:
    """Classes under ``target`` whose query variants have pages left, in the given order."""
    c = load_collection(out)
    return [
        label
        for label, query in classes.items()
        if c.count(label) < target and not _ran_out(c, label, query, rules)
    ]


def _ran_out(c: Collection, label: str, query: str, rules: Rules) -> bool:
    cursors = c.cursors.get(label, {})
    return all(
        variant in cursors and not 0 < cursors[variant][0] <= rules.max_pages
        for variant in query_variants(query)
    )


def class_reports(
    out: Path, classes: dict[str, str], target: int, reports: dict[str, ClassReport]
) -> list[ClassReport]:
    """A report per class with its count as saved now (a later class's conflicts can lower
    an earlier one's), including classes left alone because they were full already."""
    c = load_collection(out)
    final = []
    for label, query in classes.items():
        r = reports.get(label) or ClassReport(label, query, target)
        r.collected = c.count(label)
        r.status = "full" if r.collected >= target else "short"
        final.append(r)
    return final


@task(name="collect-class", log_prints=True, **CPU)
def collect_class_task(
    provider: str,
    options: SearchOptions,
    pacing: Pacing,
    rules: Rules,
    out: str,
    label: str,
    query: str,
    target: int,
    report: ClassReport | None = None,
) -> ClassReport:
    # CPU policy (no task retries): the retries that make sense are the paced ones inside;
    # a task retry would hammer a rate-limited engine again at once.
    c = load_collection(Path(out))
    have = c.count(label)
    with progress(f"urls {label}", max(0, target - have)) as tick:
        return collect_class(
            image_search(provider, options),
            pacer_for(provider, pacing),
            c,
            label,
            query,
            target,
            rules,
            tick,
            report,
        )


# -- reporting ---------------------------------------------------------------------------------


def publish_urls(reports: list[ClassReport]) -> None:
    """The count per class against its target, as a Prefect table artifact."""
    rows = []
    for r in reports:
        row = asdict(r)
        row["conflicts"] = len(r.conflicts)
        rows.append(row)
    create_table_artifact(rows, key="urls-counts", description="URLs per class against the target")
