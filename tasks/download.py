"""Download: URL lists in, content-addressed raw files and one manifest row per URL out.

One aiohttp session per call, bounded concurrency, a total deadline per URL that covers
its retries, and a byte cap enforced while reading (:mod:`tasks.bodies`). Every failure of a
single URL becomes a row outcome (see ``tasks.manifest.DOWNLOAD_OUTCOMES``); nothing escapes,
and no partial file is ever left in ``raw/``.

Resume: finished rows go to the journal (:mod:`tasks.journal`) and are reported once written
there, so a run killed at any point and run again fetches no URL it reported as settled for
good. Transient failures (timeouts, connection errors, 5xx, 429) are tried again.

At scale: rows stream from a manifest file to another (:func:`download_manifest`), read a
chunk at a time and written in input order, and the per-URL state of a run (URLs seen, rows
settled by an earlier run) lives in a temporary SQLite database (:mod:`tasks.url_index`):
memory is bounded by the chunk size, not by the number of URLs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prefect import task
from prefect.cache_policies import NONE
from yarl import URL

from tasks.bodies import save_body
from tasks.journal import Compaction, Journal, settled_rows
from tasks.manifest import (
    UrlRow,
    batches,
    count_rows,
    data_dir_lock,
    iter_rows,
    row_writer,
    with_outcome,
)
from tasks.progress import progress as progress_bar
from tasks.url_index import UrlIndex
from ursa.files import TEMP_PREFIX, atomic_writer
from ursa.layout import Layout
from ursa.settings import INGEST_CHUNK_ROWS

_MAX_BACKOFF_S = 5.0
_BAD_URL_CHARS = re.compile(r"[\s\x00-\x1f]")  # whitespace (Unicode too) and control chars


@dataclass(frozen=True)
class DownloadOptions:
    concurrency: int = 32
    per_host: int = 16
    timeout_s: float = 10.0  # total deadline per URL, retries and waits included
    attempt_timeout_s: float = 5.0
    retries: int = 3  # extra attempts after the first
    backoff_s: float = 0.2  # doubled after each failed attempt, capped at _MAX_BACKOFF_S
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 10
    user_agent: str = "Ursa/0.1 (image classifier dataset builder; one GET per listed URL)"

    def __post_init__(self) -> None:
        for name in ("concurrency", "per_host", "max_bytes", "max_redirects"):
            if getattr(self, name) < 1:
                raise ValueError(f"DownloadOptions.{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("timeout_s", "attempt_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DownloadOptions.{name} must be > 0, got {getattr(self, name)}.")
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError(
                f"DownloadOptions.retries and backoff_s must be >= 0, "
                f"got {self.retries} and {self.backoff_s}."
            )


def download_urls(
    rows: list[UrlRow],
    data_dir: Path,
    options: DownloadOptions = DownloadOptions(),
    progress: Callable[[UrlRow], None] | None = None,
    resume: bool = True,
) -> list[UrlRow]:
    """Download every row's URL into ``data_dir/raw/``; return the rows with their outcomes.

    The result has the same length and order as ``rows``; the input rows are not changed,
    and rows that already have an outcome (local files) pass through. ``progress(row)`` is
    called once per finished row. With ``resume``, rows settled by an earlier (perhaps
    killed) run are taken from the journal instead of fetched again; without it the
    journal starts afresh. :func:`download_manifest` does the same from file to file.
    """
    return asyncio.run(download_urls_async(rows, data_dir, options, progress, resume))


async def download_urls_async(
    rows: list[UrlRow],
    data_dir: Path,
    options: DownloadOptions = DownloadOptions(),
    progress: Callable[[UrlRow], None] | None = None,
    resume: bool = True,
) -> list[UrlRow]:
    """:func:`download_urls` for callers that already run an event loop."""
    out: list[UrlRow] = []
    await _download_rows(rows, data_dir, out.append, options, progress, resume, INGEST_CHUNK_ROWS)
    return out


def download_manifest(
    source: Path,
    data_dir: Path,
    target: Path,
    options: DownloadOptions = DownloadOptions(),
    progress: Callable[[UrlRow], None] | None = None,
    resume: bool = True,
    chunk_rows: int = INGEST_CHUNK_ROWS,
) -> Path:
    """:func:`download_urls` from the manifest at ``source`` to the manifest ``target`` (the
    same rows, in the same order, with their outcomes); returns ``target``.

    The rows stream through: the source is read ``chunk_rows`` rows at a time, and at most
    two chunks' rows are held at once, whatever the number of URLs.
    """
    with row_writer(Path(target), UrlRow) as write:
        rows = iter_rows(Path(source), UrlRow)
        asyncio.run(_download_rows(rows, data_dir, write, options, progress, resume, chunk_rows))
    return Path(target)


async def _download_rows(
    rows: Iterable[UrlRow],
    data_dir: Path,
    emit: Callable[[UrlRow], None],
    options: DownloadOptions,
    progress: Callable[[UrlRow], None] | None,
    resume: bool,
    chunk_rows: int,
) -> None:
    """Download ``rows``; ``emit(row)`` each finished row, in input order."""
    data_dir = Path(data_dir)
    raw_dir = Layout(data_dir).raw
    raw_dir.mkdir(parents=True, exist_ok=True)
    journal_path = Layout(data_dir).journal
    with data_dir_lock(data_dir, "download"), UrlIndex() as index:
        # Under the lock nobody else writes here: any temporary file is a killed run's.
        for stale in raw_dir.glob(f"{TEMP_PREFIX}*"):
            stale.unlink(missing_ok=True)
        for stale in journal_path.parent.glob(f".{journal_path.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # a killed run's compaction (see below)
        if resume:
            index.add_settled(settled_rows(journal_path, data_dir))
        journal_path.parent.mkdir(parents=True, exist_ok=True)
        # Compacted as the rows come: one line per URL of this run, put over the appended log
        # (atomically) once the run has finished, and dropped if it fails.
        with atomic_writer(journal_path) as compacted:
            compaction = Compaction(compacted, index.first_journaled)

            def done(row: UrlRow) -> None:
                compaction.add(row)
                emit(row)

            with open(journal_path, "a" if resume else "w", encoding="utf-8") as fh:
                journal = Journal(fh, progress)
                try:
                    await _download(
                        rows, raw_dir, options, index, journal, progress, done, chunk_rows
                    )
                finally:
                    journal.flush()  # what finished before an error is kept too


async def _download(
    rows: Iterable[UrlRow],
    raw_dir: Path,
    options: DownloadOptions,
    index: UrlIndex,
    journal: Journal,
    progress: Callable[[UrlRow], None] | None,
    emit: Callable[[UrlRow], None],
    chunk_rows: int,
) -> None:
    held: dict[int, UrlRow] = {}  # finished rows waiting for an earlier one: order is kept
    emitted = 0  # rows emitted so far: the next one to emit
    progressed = asyncio.Event()

    def finish(position: int, row: UrlRow, fetched: bool) -> None:
        nonlocal emitted
        if fetched:
            journal.add(row)  # reported once its line is written: then it survives a SIGKILL
        elif progress is not None:
            progress(row)
        held[position] = row
        while emitted in held:
            emit(held.pop(emitted))
            emitted += 1
        progressed.set()

    # Small: the rows to fetch are read from the source as the workers take them.
    queue: asyncio.Queue[tuple[int, UrlRow, URL] | None] = asyncio.Queue(options.concurrency)

    async def produce() -> None:
        """Settle what needs no network at once (malformed URLs, repeats, earlier runs'
        rows); queue the rest. A chunk is read only once the rows held are at most one
        chunk: a slow URL holds back the rows after it, never more than two chunks."""
        taken = 0
        for chunk in batches(rows, chunk_rows):
            while taken - emitted > chunk_rows:
                progressed.clear()
                await progressed.wait()
            for position, row in enumerate(chunk, start=taken):
                url = _settled_here(position, row)
                if url is not None:
                    await queue.put((position, row, url))
            taken += len(chunk)
            index.commit()
        for _ in range(options.concurrency):
            await queue.put(None)  # one stop per worker

    def _settled_here(position: int, row: UrlRow) -> URL | None:
        """Settle ``row`` without the network if it can be; else its URL to fetch."""
        if row.outcome:  # settled before download (a local file): passed through as it is
            finish(position, row, fetched=False)
            return None
        url, problem = _checked_url(row.url)
        if problem:
            finish(position, with_outcome(row, "invalid_url", problem), fetched=False)
            return None
        first = index.first_seen(row.url, position, row.label)
        if first is not None:
            reason = f"Same URL as row {first[0]} (label '{first[1]}'); fetched once."
            finish(position, with_outcome(row, "duplicate_url", reason), fetched=False)
            return None
        earlier = index.settled(row.url)
        if earlier is not None:
            finish(position, dataclasses.replace(earlier, label=row.label), fetched=False)
            return None
        return url  # parsed once here, not again by aiohttp

    connector = aiohttp.TCPConnector(
        limit=options.concurrency, limit_per_host=options.per_host, ttl_dns_cache=300
    )
    # The session timeout is per attempt; the per-URL deadline is enforced around the retries.
    timeout = aiohttp.ClientTimeout(
        total=options.attempt_timeout_s, sock_connect=options.attempt_timeout_s
    )
    headers = {"User-Agent": options.user_agent}
    # No cookie jar: a downloader has no session to keep, and parsing every Set-Cookie of
    # thousands of responses costs CPU. No transparent decompression of image bytes either.
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers=headers,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    )
    async with session as s:

        async def worker() -> None:
            # A fixed pool of workers pulling from one queue: memory stays flat however
            # many URLs there are (no task, coroutine or future per URL).
            while (item := await queue.get()) is not None:
                position, row, url = item
                finish(position, await _fetch_row(s, row, url, raw_dir, options), fetched=True)

        running = [asyncio.ensure_future(produce())]
        running += [asyncio.ensure_future(worker()) for _ in range(options.concurrency)]
        try:
            await asyncio.gather(*running)
        finally:  # an error (or a cancellation) stops the others too
            for job in running:
                job.cancel()
            await asyncio.gather(*running, return_exceptions=True)
    assert not held, "every finished row is emitted"


def _checked_url(url: str) -> tuple[URL, str]:
    """``url`` parsed (as aiohttp would parse it) and why it cannot be fetched ("" if it can).

    The parsed URL is what gets fetched: aiohttp takes it as it is instead of parsing again.
    """
    if not url or _BAD_URL_CHARS.search(url):
        return URL(), f"Malformed URL {url!r}: empty or contains whitespace/control characters."
    try:
        parsed = URL(url)
        port = parsed.port  # raises on a bad port
    except (ValueError, TypeError) as exc:
        return URL(), f"Malformed URL {url!r}: {exc}"
    if parsed.scheme not in ("http", "https"):
        return parsed, f"URL {url!r} has scheme '{parsed.scheme}'; only http and https are fetched."
    if not parsed.host or port is None:
        return parsed, f"URL {url!r} has no host."
    return parsed, ""


@dataclass
class _Retry:
    """An attempt that failed in a way worth retrying."""

    outcome: str  # what the row records if no retry succeeds
    reason: str
    http_status: int | None = None
    retry_after_s: float | None = None


async def _fetch_row(
    session: aiohttp.ClientSession,
    row: UrlRow,
    url: URL,
    raw_dir: Path,
    options: DownloadOptions,
) -> UrlRow:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.timeout_s
    attempts = 0
    last: _Retry | None = None
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                attempts += 1
                result = await _attempt(session, row, url, raw_dir, options)
                if isinstance(result, UrlRow):
                    return dataclasses.replace(result, attempts=attempts)
                last = result
                if attempts > options.retries:
                    return with_outcome(
                        row,
                        last.outcome,
                        f"{last.reason} (gave up after {attempts} attempts)",
                        http_status=last.http_status,
                        attempts=attempts,
                    )
                delay = min(options.backoff_s * 2 ** (attempts - 1), _MAX_BACKOFF_S)
                if last.retry_after_s is not None:
                    delay = last.retry_after_s
                left = deadline - loop.time()
                if delay >= left:
                    # Waiting would overrun the deadline: record what we know now.
                    return with_outcome(
                        row,
                        last.outcome,
                        f"{last.reason}; retry in {delay:g} s does not fit the "
                        f"{left:.2f} s left of the {options.timeout_s:g} s deadline",
                        http_status=last.http_status,
                        attempts=attempts,
                    )
                await asyncio.sleep(delay)
    except TimeoutError:
        detail = f"; last failure: {last.reason}" if last else ""
        return with_outcome(
            row,
            "timeout",
            f"No complete answer within the {options.timeout_s:g} s deadline "
            f"({attempts} attempt{'s' if attempts != 1 else ''}{detail})",
            http_status=last.http_status if last else None,
            attempts=attempts,
        )
    except Exception as exc:  # one URL's failure never escapes: it becomes its row
        return with_outcome(
            row,
            "connection_error",
            f"{type(exc).__name__}: {exc}",
            attempts=attempts,
        )


async def _attempt(
    session: aiohttp.ClientSession,
    row: UrlRow,
    url: URL,
    raw_dir: Path,
    options: DownloadOptions,
) -> UrlRow | _Retry:
    """One GET of ``url`` (``row.url`` parsed): a finished row, or a :class:`_Retry`."""
    try:
        # aiohttp raises on the max_redirects-th redirect (it follows one fewer): +1 follows
        # exactly max_redirects.
        async with session.get(url, max_redirects=options.max_redirects + 1) as response:
            status = response.status
            if status >= 400:
                reason = f"HTTP {status} {response.reason or ''}".rstrip()
                if status >= 500 or status == 429:
                    return _Retry("http_error", reason, status, _retry_after(response))
                return with_outcome(row, "http_error", reason, http_status=status)
            return await save_body(row, response, raw_dir, options.max_bytes)
    except aiohttp.ClientSSLError as exc:  # a bad certificate does not get better by retrying
        return with_outcome(row, "connection_error", f"{type(exc).__name__}: {exc}")
    except aiohttp.TooManyRedirects as exc:  # a loop or an over-long chain: final
        chain = " -> ".join(str(r.url) for r in exc.history[-3:])
        return with_outcome(
            row,
            "connection_error",
            f"More than {options.max_redirects} redirects (a loop?); last: {chain}",
            http_status=exc.history[-1].status if exc.history else None,
        )
    except (aiohttp.InvalidUrlRedirectClientError, aiohttp.NonHttpUrlRedirectClientError) as exc:
        # A redirect to file://, ftp:// or garbage is refused, never followed.
        return with_outcome(row, "invalid_url", f"Redirect refused: {type(exc).__name__}: {exc}")
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        return _Retry("connection_error", f"{type(exc).__name__}: {exc}")
    except TimeoutError as exc:
        # aiohttp's own per-attempt timeout; the per-URL deadline cancels instead, so it
        # reaches _fetch_row as TimeoutError only at the `async with asyncio.timeout_at` exit.
        message = f": {exc}" if str(exc) else ""
        return _Retry(
            "timeout", f"Attempt timed out after {options.attempt_timeout_s:g} s{message}"
        )


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    """``Retry-After`` in seconds, from either of its forms (delay-seconds or an HTTP-date)."""
    raw = response.headers.get("Retry-After", "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None  # unparseable: the backoff applies
    return max(0.0, when.timestamp() - time.time())


# Retries live inside download_urls (per URL, within a deadline), so the task has none; a
# cache keyed on the source's path would skip re-downloading changed URLs.
@task(name="download", cache_policy=NONE)
def download_task(
    source: Path,
    data_dir: Path,
    options: DownloadOptions = DownloadOptions(),
    resume: bool = True,
    chunk_rows: int = INGEST_CHUNK_ROWS,
) -> Path:
    """download_manifest from the manifest ``source`` to the data folder's downloaded
    manifest (returned), with a progress bar on a terminal and a progress artifact in the UI.

    No task-level retries: each URL has its own retries within its deadline.
    """
    target = Layout(data_dir).downloaded_manifest
    with progress_bar("download", count_rows(Path(source))) as tick:
        return download_manifest(source, data_dir, target, options, tick, resume, chunk_rows)
