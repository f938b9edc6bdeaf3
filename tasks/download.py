"""Download: URL lists in, content-addressed raw files and one manifest row per URL out.

One aiohttp session per call, bounded concurrency, a total deadline per URL that covers
its retries, and a byte cap enforced while reading (:mod:`tasks.bodies`). Every failure of a
single URL becomes a row outcome (see ``tasks.manifest.DOWNLOAD_OUTCOMES``); nothing escapes,
and no partial file is ever left in ``raw/``.

Resume: finished rows go to the journal (:mod:`tasks.journal`) and are reported once written
there, so a run killed at any point and run again fetches no URL it reported as settled for
good. Transient failures (timeouts, connection errors, 5xx, 429) are tried again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prefect import task
from prefect.cache_policies import NONE
from yarl import URL

from tasks.bodies import save_body
from tasks.journal import Journal, read_journal, write_journal
from tasks.manifest import UrlRow, data_dir_lock, with_outcome
from tasks.progress import progress as progress_bar
from ursa.files import TEMP_PREFIX
from ursa.layout import Layout

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
    journal starts afresh.
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
    data_dir = Path(data_dir)
    raw_dir = Layout(data_dir).raw
    raw_dir.mkdir(parents=True, exist_ok=True)
    journal_path = Layout(data_dir).journal
    with data_dir_lock(data_dir, "download"):
        # Under the lock nobody else writes here: any temporary file is a killed run's.
        for stale in raw_dir.glob(f"{TEMP_PREFIX}*"):
            stale.unlink(missing_ok=True)
        settled = read_journal(journal_path, data_dir) if resume else {}
        journal_path.parent.mkdir(parents=True, exist_ok=True)
        with open(journal_path, "a" if resume else "w", encoding="utf-8") as fh:
            journal = Journal(fh, progress)
            try:
                out = await _download(rows, raw_dir, options, settled, journal, progress)
            finally:
                journal.flush()  # what finished before an error is kept too
        # Compact: one line per URL of this run, written atomically over the appended log.
        write_journal(journal_path, out)
    return out


async def _download(
    rows: list[UrlRow],
    raw_dir: Path,
    options: DownloadOptions,
    settled: dict[str, UrlRow],
    journal: Journal,
    progress: Callable[[UrlRow], None] | None,
) -> list[UrlRow]:
    out: list[UrlRow | None] = [None] * len(rows)

    def finish(index: int, row: UrlRow, fetched: bool) -> None:
        out[index] = row
        if fetched:
            journal.add(row)  # reported once its line is written: then it survives a SIGKILL
        elif progress is not None:
            progress(row)

    # Settle what needs no network first: malformed URLs, repeats, and earlier runs' rows.
    first_seen: dict[str, int] = {}
    to_fetch: list[tuple[int, URL]] = []  # parsed once here, not again by aiohttp
    for index, row in enumerate(rows):
        if row.outcome:  # settled before download (a local file): passed through as it is
            finish(index, row, fetched=False)
            continue
        url, problem = _checked_url(row.url)
        if problem:
            finish(index, with_outcome(row, "invalid_url", problem), fetched=False)
        elif row.url in first_seen:
            first = rows[first_seen[row.url]]
            reason = f"Same URL as row {first_seen[row.url]} (label '{first.label}'); fetched once."
            finish(index, with_outcome(row, "duplicate_url", reason), fetched=False)
        else:
            first_seen[row.url] = index
            if row.url in settled:
                earlier = settled[row.url]
                finish(index, dataclasses.replace(earlier, label=row.label), fetched=False)
            else:
                to_fetch.append((index, url))

    connector = aiohttp.TCPConnector(
        limit=options.concurrency, limit_per_host=options.per_host, ttl_dns_cache=300
    )
    # The session timeout is per attempt; the per-URL deadline is enforced around the retries.
    timeout = aiohttp.ClientTimeout(
        total=options.attempt_timeout_s, sock_connect=options.attempt_timeout_s
    )
    headers = {"User-Agent": options.user_agent}
    pending: Iterator[tuple[int, URL]] = iter(to_fetch)
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
            # A fixed pool of workers pulling from one iterator: memory stays flat however
            # many URLs there are (no task, coroutine or future per URL).
            for index, url in pending:
                row = await _fetch_row(s, rows[index], url, raw_dir, options)
                finish(index, row, fetched=True)

        await asyncio.gather(*(worker() for _ in range(min(options.concurrency, len(to_fetch)))))
    assert all(row is not None for row in out)
    return out  # type: ignore[return-value]


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


# Retries live inside download_urls (per URL, within a deadline), so the task has none;
# rows and options are small but a cache keyed on them would skip re-downloading changed URLs.
@task(name="download", cache_policy=NONE)
def download_task(
    rows: list[UrlRow],
    data_dir: Path,
    options: DownloadOptions = DownloadOptions(),
    resume: bool = True,
) -> list[UrlRow]:
    """download_urls with a progress bar on a terminal and a progress artifact in the UI.

    No task-level retries: each URL has its own retries within its deadline.
    """
    with progress_bar("download", len(rows)) as tick:
        return download_urls(rows, data_dir, options, progress=tick, resume=resume)
