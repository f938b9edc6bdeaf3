"""A local stand-in for DuckDuckGo's image search, on 127.0.0.1, speaking its real protocol.

``ddgs`` (and a browser) search images on DuckDuckGo in two steps: ``GET /?q=QUERY`` returns
a page carrying a ``vqd`` token for that query, then ``GET /i.js?o=json&q=QUERY&vqd=TOKEN&s=OFFSET``
returns a JSON page of up to 100 results with a ``next`` link while more remain. This server
answers both over a catalog of listings (usually the images of a local
:class:`~standins.imagehost.ImageHost`), so ``ursa urls`` runs its real client code offline when
``URSA_SEARCH_URL`` points here. It also reproduces what users of the real engine run into:

- a query for the wrong token is refused (403), as DuckDuckGo does;
- :meth:`SearchHost.rate_limit` makes the next N requests answer 403, 202 or 429;
- ``empty_from_page``: pages from that one on come back empty although more results exist;
- later pages repeat the last results of the page before (duplicates across pages);
- each query sees a window of ``per_query`` listings of its class, starting at an offset of
  its own, so query variants find overlapping but different images.

A query matches the first class whose name is one of its words ("black bear" -> ``black``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from PIL import Image

from standins.imagehost import ImageHost
from standins.photos import QUERIES

PAGE_SIZE = 100  # DuckDuckGo's i.js pages hold up to 100 results; ddgs asks for s=(page-1)*100
STOCK_HOSTS = ("www.shutterstock.com", "media.istockphoto.com", "www.alamy.com")


@dataclass(frozen=True)
class Listing:
    """One catalog entry: what a result of the real engine carries."""

    image: str
    title: str
    url: str  # the page the image appears on
    width: int
    height: int


class SearchHost:
    """DuckDuckGo's image protocol over ``catalog`` (class name -> listings, best first)."""

    def __init__(
        self,
        catalog: dict[str, list[Listing]],
        per_query: int = 150,
        repeat: int = 3,
        empty_from_page: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.catalog = catalog
        self.per_query = per_query
        self.repeat = repeat
        self.empty_from_page = empty_from_page
        self.requests: list[tuple[float, str, dict[str, str]]] = []  # (time, path, query)
        self._limited: list[int] = []  # statuses still to answer instead of results
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SearchHost:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def rate_limit(self, times: int, statuses: Iterable[int] = (403, 202, 429)) -> None:
        """The next ``times`` requests answer these statuses in turn instead of results."""
        cycle = list(statuses)
        with self._lock:
            self._limited = [cycle[i % len(cycle)] for i in range(times)]

    def result_requests(self) -> list[tuple[float, dict[str, str]]]:
        """(time, query parameters) of every ``i.js`` request so far."""
        with self._lock:
            return [(t, q) for t, path, q in self.requests if path == "/i.js"]

    # -- the protocol -------------------------------------------------------------------

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, str, bytes]:
        """(status, content type, body) for one GET."""
        with self._lock:
            self.requests.append((time.monotonic(), path, query))
            if self._limited:
                status = self._limited.pop(0)
                return status, "text/html", b"<html><body>If this error persists...</body></html>"
        q = query.get("q", "")
        if path == "/":
            page = f'<html><script>vqd="{_token(q)}";</script><body>{q}</body></html>'
            return 200, "text/html", page.encode()
        if path != "/i.js":
            return 404, "text/plain", b"not found"
        if not q or query.get("vqd") != _token(q):
            return 403, "text/plain", b"Forbidden"  # as DuckDuckGo answers a stale token
        return 200, "application/json", json.dumps(self._page(q, query)).encode()

    def _page(self, q: str, query: dict[str, str]) -> dict:
        found = self._results(q)
        start = int(query.get("s", "0") or 0)
        page_number = start // PAGE_SIZE + 1
        items = found[start : start + PAGE_SIZE]
        if start:
            items = found[max(0, start - self.repeat) : start] + items
        if self.empty_from_page and page_number >= self.empty_from_page:
            items = []
        body: dict = {
            "ads": None,
            "query": q,
            "queryEncoded": quote(q),
            "response_type": "images",
            "results": [_result(item) for item in items],
            "vqd": {q: _token(q)},
        }
        if items and start + PAGE_SIZE < len(found):
            rest = {k: v for k, v in query.items() if k not in ("s", "vqd")}
            body["next"] = "i.js?" + urlencode({**rest, "s": start + PAGE_SIZE})
        return body

    def _results(self, q: str) -> list[Listing]:
        words = set(re.findall(r"\w+", q.lower()))
        label = next((c for c in self.catalog if c.lower() in words), None)
        if label is None:
            return []
        listings = self.catalog[label]
        offset = int(hashlib.sha256(q.encode()).hexdigest(), 16) % max(1, len(listings))
        n = min(self.per_query, len(listings))
        return [listings[(offset + i) % len(listings)] for i in range(n)]


def _token(q: str) -> str:
    return "4-" + str(int(hashlib.sha256(q.encode()).hexdigest()[:24], 16))


def _result(item: Listing) -> dict:
    digest = hashlib.sha256(item.image.encode()).hexdigest()[:16]
    return {
        "height": item.height,
        "image": item.image,
        "image_token": digest,
        "source": "Bing",
        "thumbnail": f"https://tse.mm.bing.net/th?id={digest}",
        "thumbnail_token": digest,
        "title": item.title,
        "url": item.url,
        "width": item.width,
    }


def _handler(search: SearchHost) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            status, content_type, body = search.answer(parts.path, query)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: tests read search.requests instead

    return Handler


def catalog_from_lists(
    lists: dict[str, list[str]], image_root: Path | None = None
) -> dict[str, list[Listing]]:
    """Listings for per-class URL lists (an image host's), with what real results also hold.

    Sizes are read from the files under ``image_root`` for ``/img/<class>/<name>`` URLs (other
    URLs, junk, get a plausible 800x600). Every tenth listing is followed by a watermarked
    stock photo on a stock site, every twentieth by a thumbnail-sized copy (64x48); every
    class also lists the first image of the next class (one URL found under two classes).
    """
    labels = list(lists)
    catalog: dict[str, list[Listing]] = {}
    for n, (label, urls) in enumerate(lists.items()):
        listings = []
        for i, url in enumerate(urls):
            width, height = _size(url, image_root)
            page = f"https://example.org/{label}/{i}.html"
            listings.append(Listing(url, f"{label} bear photo {i}", page, width, height))
            if i % 20 == 4:  # a thumbnail-sized copy, as icon and sprite sites offer
                icon = Listing(url + "?w=64", f"{label} icon", "https://example.org/icons", 64, 48)
                listings.append(icon)
            if i % 10 == 9:
                stock = STOCK_HOSTS[i % len(STOCK_HOSTS)]
                listings.append(
                    Listing(
                        f"https://{stock}/image-photo/{label}-bear-{i}.jpg",
                        f"{label} bear stock photo",
                        f"https://{stock}/{label}-{i}",
                        1000,
                        667,
                    )
                )
        if len(labels) > 1:
            other = lists[labels[(n + 1) % len(labels)]]
            if other:
                listings.insert(min(3, len(listings)), Listing(other[0], "a bear", "", 800, 600))
        catalog[label] = listings
    return catalog


def _size(url: str, image_root: Path | None) -> tuple[int, int]:
    path = urlsplit(url).path
    if image_root is not None and path.startswith("/img/"):
        file = Path(image_root) / unquote(path.removeprefix("/img/"))
        if file.is_file():
            with Image.open(file) as im:
                return im.size  # the stored size: engines report it before EXIF rotation too
    return 800, 600


@contextmanager
def photo_search(
    photos: Path, latency_s: float = 0.0, per_query: int = 150
) -> Iterator[tuple[ImageHost, SearchHost]]:
    """The image host over a folder of photos (junk included) and a search stand-in over it."""
    with ImageHost(photos, latency_s=latency_s) as images:
        catalog = catalog_from_lists(images.url_lists(), photos)
        with SearchHost(catalog, per_query=per_query) as search:
            yield images, search


def run_photo_hosts(photos: Path, host: str, port: int, latency_s: float = 0.0) -> None:
    """Serve ``photos`` and a search over them until interrupted; for ``ursa host --photos``."""
    with ImageHost(photos, host=host, port=port, latency_s=latency_s) as images:
        catalog = catalog_from_lists(images.url_lists(), photos)
        with SearchHost(catalog, host=host, port=port + 1 if port else 0) as search:
            terms = " ".join(f'{label}="{q}"' for label, q in QUERIES.items() if label in catalog)
            print(f"Serving {images.image_root} at {images.base_url}/img/", flush=True)
            print(
                f"Search it: URSA_SEARCH_URL={search.base_url} ursa urls {terms} --out bears/",
                flush=True,
            )
            with suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
