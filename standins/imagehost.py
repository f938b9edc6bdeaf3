"""The local image host: serves an image folder over HTTP on 127.0.0.1, junk included.

The demo, the tests and the benchmarks all download from this host instead of the web.
Besides the real files it serves the junk that real URL lists hold (dead links, flaky and
slow servers, HTML where an image was promised, truncated and empty files, duplicates,
near-duplicates, label conflicts), all derived deterministically from the real images, and
it knows which download outcome each junk URL should end with (:meth:`expected_outcomes`).

Routes:

- ``/img/<label>/<file>``: every file under ``image_root``.
- ``/flaky/<label>/<file>?status=500&times=1&retry_after=S``: answers ``status`` for the
  first ``times`` requests of that exact URL (with ``Retry-After: S`` when given), then the file.
- ``/slow/<label>/<file>?seconds=30``: the file after a delay; cut short by :meth:`ImageHost.stop`.
- ``/page/<name>``: an HTML page (``text/html``), whatever the name promises.
- ``/blob/<name>``: junk bytes derived from real images (see :meth:`ImageHost.junk`).
- ``/endless.png``: a body that starts like a PNG and never ends, for byte-cap tests.
- ``/big.png?bytes=N&declared=M``: N bytes that start like a PNG, streamed without a
  Content-Length, or with ``Content-Length: M`` when M >= N (a header that claims more).
- ``/status/<code>?retry_after=S``: always answers ``code`` (403, 404, 410, 503, ...).
- ``/reset/<label>/<file>``: headers and half the file, then a TCP reset.
- ``/drip/<label>/<file>?interval=0.5``: the file, one byte per ``interval`` seconds.
- ``/redirect/<n>?to=PATH``: a chain of ``n`` 302s ending at ``PATH`` (default an image);
  ``/loop/<a|b>`` redirects between two URLs forever; ``/goto?location=URL`` to anywhere.
- ``/body/<json|svg|html>``: a JSON error, an SVG picture or a web page.

Every request is counted (:meth:`ImageHost.requests_for`), with its User-Agent and the
peak number of requests in flight, so tests can check what a client really did.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import mimetypes
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from aiohttp import web
from PIL import Image
from yarl import URL

from ursa.embedded import write_embedded_images
from ursa.layout import Layout

_SLOW_DEFAULT_S = 30.0  # longer than any sane download timeout
_JSON = b'{"error": "not found", "status": 404}'
_SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
    b'<circle cx="32" cy="32" r="30" fill="red"/></svg>'
)
_HTML = (
    b"<!doctype html><html><head><title>Image not available</title></head>"
    b"<body><h1>This image is no longer available</h1></body></html>"
)


@dataclass(frozen=True)
class JunkUrl:
    """One junk line in the URL lists and the download outcome it should end with."""

    url: str
    label: str  # the list it is written to
    kind: str  # what is wrong with it: missing, flaky, slow, html, truncated_jpeg, empty,
    # duplicate_url, exact_copy, near_resized, near_jpeg, label_conflict
    outcome: str  # download outcome (tasks.manifest.DOWNLOAD_OUTCOMES); the repeat's for duplicates
    source: str = ""  # URL of the real image it derives from (flaky/slow replace it in the list)


@dataclass(frozen=True)
class _Junk:
    kind: str
    path: str  # URL path on this host
    label: str
    outcome: str
    source: str = ""  # URL path of the real image it derives from


class ImageHost:
    """An aiohttp server in a background thread with its own event loop."""

    def __init__(
        self, image_root: Path, host: str = "127.0.0.1", port: int = 0, latency_s: float = 0.0
    ) -> None:
        if latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {latency_s}.")
        self.image_root = Path(image_root).resolve()
        self.host = host
        self.port = port
        self.latency_s = latency_s
        self._images: dict[str, list[str]] = {}  # label -> file names, sorted
        self._plan: list[_Junk] = []
        self._no_junk = ""  # why there is no junk plan, when the folder cannot hold one
        self._replaced: dict[str, str] = {}  # real image path -> junk path listed instead
        self._blobs: dict[str, tuple[bytes, str]] = {}  # name -> (bytes, content type)
        self._hits: dict[str, int] = {}  # flaky URL -> requests so far
        self._counts: Counter[str] = Counter()  # path?query -> requests
        self._agents: set[str] = set()
        self._in_flight = 0
        self._peak_in_flight = 0
        self._count_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> ImageHost:
        if self._thread is not None:
            raise RuntimeError(f"ImageHost is already running at {self.base_url}.")
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"Image root {self.image_root} is not a folder.")
        self._images = _list_images(self.image_root)
        try:
            self._plan, self._replaced, self._blobs = _plan_junk(self.image_root, self._images)
            self._no_junk = ""
        except ValueError as exc:
            # A folder too small for the junk is still worth serving; only junk is refused.
            self._plan, self._replaced, self._blobs = [], {}, {}
            self._no_junk = str(exc)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ursa-imagehost", daemon=True
        )
        self._thread.start()
        try:
            future = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
            self.port = future.result(timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=15)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)
        loop.close()
        self._loop = self._thread = self._runner = self._stopping = None

    def __enter__(self) -> ImageHost:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._thread is None:
            raise RuntimeError("ImageHost is not running: call start() first.")
        return f"http://{self.host}:{self.port}"

    # -- what clients did ------------------------------------------------------------------

    def requests_for(self, url: str) -> int:
        """How many requests reached this host for ``url`` (path and query), so far."""
        with self._count_lock:
            return self._counts[_request_key(URL(url).path, URL(url).query_string)]

    def request_counts(self) -> dict[str, int]:
        """``path?query`` (decoded) -> requests so far."""
        with self._count_lock:
            return dict(self._counts)

    def user_agents(self) -> set[str]:
        with self._count_lock:
            return set(self._agents)

    @property
    def peak_in_flight(self) -> int:
        """The most requests that were being answered at the same time."""
        return self._peak_in_flight

    # -- URL lists ----------------------------------------------------------------------

    def write_url_lists(
        self, dest: Path, max_per_class: int | None = None, junk: bool = True
    ) -> Path:
        """Write :meth:`url_lists` as ``dest/<label>.txt`` (one URL per line); return ``dest``."""
        lists = self.url_lists(max_per_class, junk)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for label, urls in lists.items():
            (dest / f"{label}.txt").write_text("".join(f"{u}\n" for u in urls))
        return dest

    def url_lists(
        self, max_per_class: int | None = None, junk: bool = True
    ) -> dict[str, list[str]]:
        """Label -> the URLs of its list, the way a web search exports them.

        Real images come in file order, at most ``max_per_class`` per class. With ``junk``
        the junk lines are mixed in: flaky and slow URLs stand in for the real image they
        serve, the rest are appended to the list of their class. A folder with fewer than
        two classes gets no junk (a label conflict needs two).
        """
        base = self.base_url
        if max_per_class is not None and max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1 or None, got {max_per_class}.")
        listed = {label: names[:max_per_class] for label, names in self._images.items()}
        if junk and self._no_junk:
            raise ValueError(f"No junk for {self.image_root}: {self._no_junk}")
        if junk:
            self._check_sources_listed(listed)
        lists = {}
        for label, names in listed.items():
            paths = [_img_path(label, name) for name in names]
            if junk:
                paths = [self._replaced.get(p, p) for p in paths]
                stand_ins = set(self._replaced.values())
                paths += [
                    j.path for j in self._plan if j.label == label and j.path not in stand_ins
                ]
            lists[label] = [f"{base}{p}" for p in paths]
        return lists

    def junk(self) -> list[JunkUrl]:
        """The junk lines that :meth:`write_url_lists` mixes in, in a fixed order."""
        base = self.base_url
        return [
            JunkUrl(
                url=base + j.path,
                label=j.label,
                kind=j.kind,
                outcome=j.outcome,
                source=base + j.source if j.source else "",
            )
            for j in self._plan
        ]

    def expected_outcomes(self) -> dict[str, str]:
        """Junk URL -> the download outcome a correct downloader records.

        The duplicated URL maps to ``duplicate_url``, the outcome of its repeat; its first
        row downloads ``ok``. The truncated JPEG downloads ``ok`` (verification rejects it).
        """
        return {j.url: j.outcome for j in self.junk()}

    def _check_sources_listed(self, listed: dict[str, list[str]]) -> None:
        paths = {_img_path(label, name) for label, names in listed.items() for name in names}
        for j in self._plan:
            if j.source and j.source not in paths:
                raise ValueError(
                    f"max_per_class is too small for the junk: {j.kind} derives from "
                    f"{j.source}, which the lists leave out."
                )

    # -- server -------------------------------------------------------------------------

    async def _serve(self) -> int:
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._count, self._latency])
        app.router.add_get("/img/{label}/{name}", self._img)
        app.router.add_get("/flaky/{label}/{name}", self._flaky)
        app.router.add_get("/slow/{label}/{name}", self._slow)
        app.router.add_get("/page/{name}", self._page)
        app.router.add_get("/blob/{name}", self._blob)
        app.router.add_get("/endless.png", self._endless)
        app.router.add_get("/big.png", self._big)
        app.router.add_get("/status/{code}", self._status)
        app.router.add_get("/reset/{label}/{name}", self._reset)
        app.router.add_get("/drip/{label}/{name}", self._drip)
        app.router.add_get("/redirect/{n}", self._redirect)
        app.router.add_get("/loop/{name}", self._loop_redirect)
        app.router.add_get("/goto", self._goto)
        app.router.add_get("/body/{kind}", self._body)
        # handler_cancellation: a client that gives up on /slow must not pin a handler for
        # 30 s; a short shutdown_timeout keeps stop() fast with requests in flight.
        self._runner = web.AppRunner(
            app, handle_signals=False, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        return self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        assert self._stopping is not None and self._runner is not None
        self._stopping.set()  # wakes every sleeping /slow and /drip handler: they answer now
        # Then aiohttp waits shutdown_timeout for the handlers, cancels those still running
        # (/endless, a stalled write) and awaits them: no task of the host outlives this.
        await self._runner.cleanup()

    @web.middleware
    async def _count(self, request: web.Request, handler: web.Handler) -> web.StreamResponse:
        with self._count_lock:
            self._counts[_request_key(request.path, request.query_string)] += 1
            self._agents.add(request.headers.get("User-Agent", ""))
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        try:
            return await handler(request)
        finally:
            with self._count_lock:
                self._in_flight -= 1

    @web.middleware
    async def _latency(self, request: web.Request, handler: web.Handler) -> web.StreamResponse:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return await handler(request)

    def _file(self, request: web.Request) -> Path:
        root = self.image_root
        path = (root / request.match_info["label"] / request.match_info["name"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise web.HTTPNotFound(text=f"No image {request.path}")
        return path

    async def _img(self, request: web.Request) -> web.StreamResponse:
        # A plain read and a plain response: image files are small and in the page cache, and
        # aiohttp's FileResponse hops to a thread per request, which made the host (not the
        # client) the bottleneck of the download benchmark on 2 cores.
        path = self._file(request)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return web.Response(body=path.read_bytes(), content_type=content_type)

    async def _flaky(self, request: web.Request) -> web.StreamResponse:
        path = self._file(request)
        status = _int_query(request, "status", 500)
        times = _int_query(request, "times", 1)
        self._hits[request.path_qs] = hits = self._hits.get(request.path_qs, 0) + 1
        if hits <= times:
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            return web.Response(status=status, text=f"Failure {hits} of {times}", headers=headers)
        return web.FileResponse(path)

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        path = self._file(request)
        seconds = float(request.query.get("seconds", _SLOW_DEFAULT_S))
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return web.FileResponse(path)
        return web.Response(status=503, text="Host is shutting down")

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=_HTML, content_type="text/html")

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self._blobs:
            raise web.HTTPNotFound(text=f"No blob {name}")
        body, content_type = self._blobs[name]
        return web.Response(body=body, content_type=content_type)

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        await response.write(b"\x89PNG\r\n\x1a\n")
        chunk = bytes(64 * 1024)
        while True:  # until the client hangs up (the write raises) or the host stops
            await response.write(chunk)

    async def _big(self, request: web.Request) -> web.StreamResponse:
        size = _int_query(request, "bytes", 1 << 20)
        declared = _int_query(request, "declared", -1)
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        if declared >= size:
            response.content_length = declared  # claims more than will come
        await response.prepare(request)
        head = b"\x89PNG\r\n\x1a\n"
        await response.write(head)
        left = size - len(head)
        chunk = bytes(64 * 1024)
        while left > 0:
            await response.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        if declared >= size:
            # Cut the connection short instead of finishing an honest response.
            return await _hard_close(request)
        await response.write_eof()
        return response

    async def _status(self, request: web.Request) -> web.StreamResponse:
        code = int(request.match_info["code"]) if request.match_info["code"].isdigit() else 0
        if not 400 <= code <= 599:
            raise web.HTTPBadRequest(text=f"Status '{request.match_info['code']}' is not 4xx/5xx.")
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        return web.Response(status=code, text=f"Status {code}", headers=headers)

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        data = self._file(request).read_bytes()
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        await asyncio.sleep(0.05)  # let the first half reach the client
        return await _hard_close(request)

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        data = self._file(request).read_bytes()
        interval = float(request.query.get("interval", 0.5))
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(data)
        await response.prepare(request)
        assert self._stopping is not None
        for i in range(len(data)):
            await response.write(data[i : i + 1])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)
            if self._stopping.is_set():
                break
        return response

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"]) if request.match_info["n"].isdigit() else 0
        target = request.query.get("to") or self._first_image_path()
        if n <= 0:
            raise web.HTTPFound(target)
        raise web.HTTPFound(str(URL(f"/redirect/{n - 1}").with_query(to=target)))

    async def _loop_redirect(self, request: web.Request) -> web.StreamResponse:
        other = "b" if request.match_info["name"] == "a" else "a"
        raise web.HTTPFound(f"/loop/{other}")

    async def _goto(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query.get("location", "/"))

    async def _body(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        bodies = {
            "json": (_JSON, "application/json"),
            "svg": (_SVG, "image/svg+xml"),
            "html": (_HTML, "text/html"),
        }
        if kind not in bodies:
            raise web.HTTPNotFound(text=f"No body kind '{kind}'; try {sorted(bodies)}")
        body, content_type = bodies[kind]
        return web.Response(body=body, content_type=content_type)

    def _first_image_path(self) -> str:
        label = next(iter(self._images))
        return _img_path(label, self._images[label][0])


def _request_key(path: str, query_string: str) -> str:
    return f"{path}?{query_string}" if query_string else path


async def _hard_close(request: web.Request) -> web.StreamResponse:
    """Reset the client's connection (RST, not FIN): a server that dies mid-body."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER with a zero timeout turns close() into a reset.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # The connection is gone, so handler_cancellation cancels this wait at once; returning
    # instead would make aiohttp finish a response on a dead transport and log an error.
    await asyncio.sleep(3600)
    raise AssertionError("unreachable: the handler is cancelled when its connection drops")


def run_host(image_root: Path, host: str, port: int, latency_s: float = 0.0) -> None:
    """Serve ``image_root`` until interrupted (Ctrl-C); for the ``ursa host`` command."""
    with ImageHost(image_root, host=host, port=port, latency_s=latency_s) as image_host:
        print(f"Serving {image_host.image_root} at {image_host.base_url}/img/", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


# -- the junk plan ------------------------------------------------------------------------

# (kind, download outcome) in the order they are spread over the classes, round-robin.
# flaky and slow stand in for a real image; label_conflict copies an image of the next class.
_JUNK_KINDS = (
    ("missing", "http_error"),
    ("flaky", "ok"),
    ("slow", "timeout"),
    ("html", "not_image"),
    ("truncated_jpeg", "ok"),
    ("empty", "empty"),
    ("duplicate_url", "duplicate_url"),
    ("exact_copy", "ok"),
    ("near_resized", "ok"),
    ("near_jpeg", "ok"),
    ("label_conflict", "ok"),
    ("missing", "http_error"),
    ("missing", "http_error"),
)
_NO_SOURCE = {"missing", "html", "empty"}


def _list_images(root: Path) -> dict[str, list[str]]:
    images = {
        d.name: sorted(f.name for f in d.iterdir() if f.is_file() and not f.name.startswith("."))
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }
    return {label: names for label, names in images.items() if names}


def _img_path(label: str, name: str) -> str:
    return f"/img/{quote(label)}/{quote(name)}"


def _plan_junk(
    root: Path, images: dict[str, list[str]]
) -> tuple[list[_Junk], dict[str, str], dict[str, tuple[bytes, str]]]:
    """Decide the junk: which class each goes to, which real image it derives from, its bytes."""
    labels = list(images)
    if len(labels) < 2:
        # A label conflict needs two classes; with fewer there is nothing to build a list of.
        return [], {}, {}
    plan: list[_Junk] = []
    replaced: dict[str, str] = {}
    blobs: dict[str, tuple[bytes, str]] = {}
    used = dict.fromkeys(labels, 0)  # each junk item takes the next unused image of a class

    for i, (kind, outcome) in enumerate(_JUNK_KINDS):
        label = labels[i % len(labels)]
        if kind in _NO_SOURCE:
            if kind == "missing":
                path = f"/img/{quote(label)}/missing-{i:02d}.jpg"  # 404: no such file
            elif kind == "html":
                path = f"/page/{quote(label)}-{i:02d}.jpg"
            else:
                blobs[f"empty-{i:02d}.jpg"] = (b"", "image/jpeg")
                path = f"/blob/empty-{i:02d}.jpg"
            plan.append(_Junk(kind, path, label, outcome))
            continue

        src_label = labels[(i + 1) % len(labels)] if kind == "label_conflict" else label
        names = images[src_label]
        if used[src_label] >= len(names):
            raise ValueError(f"Class '{src_label}' has too few images ({len(names)}) for junk.")
        src_name = names[used[src_label]]
        used[src_label] += 1
        source = _img_path(src_label, src_name)
        stem = f"{quote(src_label)}-{Path(src_name).stem}"
        data = (root / src_label / src_name).read_bytes()

        if kind in ("flaky", "slow"):
            path = f"/{kind}/{quote(src_label)}/{quote(src_name)}"
            replaced[source] = path
        elif kind == "duplicate_url":
            path = source  # listed once as a real image and once more at the end
        else:
            name, body, content_type = _derive(kind, stem, data)
            blobs[name] = (body, content_type)
            path = f"/blob/{name}"
        plan.append(_Junk(kind, path, label, outcome, source))
    return plan, replaced, blobs


def _derive(kind: str, stem: str, data: bytes) -> tuple[str, bytes, str]:
    """(blob name, bytes, content type) of a junk file derived from a real image's bytes."""
    if kind in ("exact_copy", "label_conflict"):
        return f"{kind}-{stem}.png", data, "image/png"
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        image = im.convert("L") if im.mode in ("L", "1", "P") else im.convert("RGB")
    out = io.BytesIO()
    if kind == "near_resized":
        image.resize((48, 48), Image.Resampling.BICUBIC).save(out, format="PNG")
        return f"{kind}-{stem}.png", out.getvalue(), "image/png"
    if kind == "near_jpeg":
        image.save(out, format="JPEG", quality=60)
        return f"{kind}-{stem}.jpg", out.getvalue(), "image/jpeg"
    if kind == "truncated_jpeg":
        image.save(out, format="JPEG", quality=90)
        whole = out.getvalue()
        return f"{kind}-{stem}.jpg", whole[: len(whole) // 2], "image/jpeg"
    raise ValueError(f"Unknown junk kind '{kind}'.")


def _int_query(request: web.Request, key: str, default: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"Query '{key}' has value '{raw}', not an integer.") from None


@contextlib.contextmanager
def embedded_url_lists(data_dir: Path, max_per_class: int | None = None) -> Iterator[Path]:
    """The embedded digits, written as image files and published (with the junk real lists
    hold) by an image host on 127.0.0.1 for the duration of the block; yields the folder of
    per-class URL lists it exports (the junk comes on top of ``max_per_class``)."""
    images = write_embedded_images(Layout(data_dir).embedded)
    with ImageHost(images) as host:
        yield host.write_url_lists(Layout(data_dir).urls, max_per_class)
