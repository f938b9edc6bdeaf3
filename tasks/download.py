"""Download: URL lists in, content-addressed raw files and one manifest row per URL out.

One aiohttp session per call, bounded concurrency, a total deadline per URL that covers
its retries, and a byte cap enforced while reading. Every failure of a single URL becomes
a row outcome (see ``tasks.manifest.DOWNLOAD_OUTCOMES``); nothing escapes, and no partial
file is ever left in ``raw/``.

Resume: finished rows are appended to ``manifests/urls.journal.jsonl`` in small batches,
at most ``_JOURNAL_DELAY_S`` after they finish, and a row is reported (progress) only once
its line is written. So a run killed at any point (SIGKILL included) and run again fetches
no URL whose row it reported as settled for good (see :func:`is_settled`): at most the last
batch, never reported, is fetched again. Transient failures (timeouts, connection errors,
5xx, 429) are tried again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import aiohttp
from prefect import task
from prefect.cache_policies import NONE
from yarl import URL

from tasks.manifest import UrlRow, data_dir_lock
from tasks.progress import progress as progress_bar
from ursa.files import TEMP_PREFIX, atomic_writer, write_new_file
from ursa.images import sniff_extension
from ursa.layout import Layout

_CHUNK = 64 * 1024
_HEAD = 16  # enough bytes for every signature that sniff_extension knows
_MAX_BACKOFF_S = 5.0
_SPILL_BYTES = 256 * 1024  # bodies up to this stay in memory: at most concurrency x this
# Statuses that may pass on a later run; every other 4xx is an answer about the URL itself.
_TRANSIENT_STATUSES = {408, 425, 429}
# Finished rows wait at most this long for their journal line: one write per batch instead of
# one per row (a system call each, a tenth of the client's CPU at a thousand rows a second).
_JOURNAL_DELAY_S = 0.05
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


# Whitespace around a URL, with what str.strip misses though an editor shows nothing: a
# byte-order mark (also where files were concatenated) and zero-width spaces and joiners.
_PADDING = re.compile(r"^[\s\ufeff\u200b-\u200d\u2060]+|[\s\ufeff\u200b-\u200d\u2060]+$")


def read_url_lists(source: Path) -> list[UrlRow]:
    """Rows from a folder of ``<label>.txt`` files (label = file stem) or from one such file.

    One URL per line (any line ending); blank lines and ``#`` comments are skipped,
    whitespace is stripped (zero-width marks too), query strings are kept. A leading UTF-8
    byte-order mark, which Windows editors write, is not part of the first URL. Labels come
    sorted, lines in file order.
    """
    source = Path(source)
    if source.is_dir():
        files = sorted(source.glob("*.txt"), key=lambda p: p.stem)
        if not files:
            raise FileNotFoundError(f"No <label>.txt URL lists in folder {source}.")
    elif source.is_file():
        files = [source]
    else:
        raise FileNotFoundError(f"URL list source {source} does not exist.")
    rows: list[UrlRow] = []
    for path in files:
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            url = _PADDING.sub("", line)
            if url and not url.startswith("#"):
                rows.append(UrlRow(url=url, label=path.stem))
    return rows


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
            journal = _Journal(fh, progress)
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
    journal: _Journal,
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
            finish(index, _result(row, "invalid_url", problem), fetched=False)
        elif row.url in first_seen:
            first = rows[first_seen[row.url]]
            reason = f"Same URL as row {first_seen[row.url]} (label '{first.label}'); fetched once."
            finish(index, _result(row, "duplicate_url", reason), fetched=False)
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


class _Journal:
    """Finished rows, appended to the journal in batches and reported once written.

    The first row of a batch schedules its write ``_JOURNAL_DELAY_S`` later; every row that
    finishes meanwhile joins it. ``progress(row)`` runs only after the write: what a run has
    reported survives a SIGKILL, and a kill loses at most one unreported batch (fetched
    again by the next run; its files, named by their hash, are simply written again).
    """

    def __init__(self, fh: TextIO, progress: Callable[[UrlRow], None] | None) -> None:
        self._fh = fh
        self._progress = progress
        self._rows: list[UrlRow] = []
        self._timer: asyncio.TimerHandle | None = None
        self._error: BaseException | None = None

    def add(self, row: UrlRow) -> None:
        if self._error is not None:
            raise self._error  # a failed write (disk full?) stops the run, loudly
        self._rows.append(row)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_JOURNAL_DELAY_S, self._write)

    def _write(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # a timer callback: keep the error for the next add()
            self._error = exc

    def flush(self) -> None:
        """Write the pending rows now (one write), then report them."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rows, self._rows = self._rows, []
        if not rows:
            return
        self._fh.write("".join(_row_json(row) + "\n" for row in rows))
        self._fh.flush()
        if self._progress is not None:
            for row in rows:
                self._progress(row)


def _row_json(row: UrlRow) -> str:
    # vars(), not dataclasses.asdict: the fields are plain values, and asdict deep-copies
    # each one (a third of the client's CPU time at a thousand rows a second).
    return json.dumps(vars(row), ensure_ascii=False)


def is_settled(row: UrlRow) -> bool:
    """Whether another attempt at this URL would give the same answer: such rows are reused.

    Timeouts, connection errors, 5xx and throttling (408, 425, 429) may pass; every other
    outcome is an answer about the URL itself.
    """
    if row.outcome in ("timeout", "connection_error", "", "invalid_url", "duplicate_url"):
        return False
    if row.outcome == "http_error":
        status = row.http_status or 0
        return 400 <= status < 500 and status not in _TRANSIENT_STATUSES
    return True


def read_journal(path: Path, data_dir: Path) -> dict[str, UrlRow]:
    """URL -> settled row from a journal; lines a kill cut short and vanished files are skipped."""
    settled: dict[str, UrlRow] = {}
    if not path.exists():
        return settled
    names = {f.name for f in UrlRow.__dataclass_fields__.values()}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                data = json.loads(line)
                row = UrlRow(**{k: v for k, v in data.items() if k in names})
            except (ValueError, TypeError):
                continue  # the last line of a killed run may be cut short
            if not is_settled(row):
                continue
            if row.outcome == "ok" and not _stored(data_dir, row.raw_path):
                continue  # the file is gone (deleted by hand): fetch again
            settled[row.url] = row
    return settled


def write_journal(path: Path, rows: list[UrlRow]) -> None:
    """The journal of a finished run: one line per fetched URL, written atomically."""
    seen: set[str] = set()
    with atomic_writer(path) as fh:
        for row in rows:
            if row.outcome in ("invalid_url", "duplicate_url") or row.url in seen:
                continue
            seen.add(row.url)
            fh.write(_row_json(row) + "\n")


def _stored(data_dir: Path, raw_path: str) -> bool:
    """The downloaded file is in raw/, or verification has moved it to quarantine."""
    if not raw_path:
        return False
    path = data_dir / raw_path
    return path.exists() or any(Layout(data_dir).quarantine.glob(f"*/{path.name}"))


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


def _result(row: UrlRow, outcome: str, reason: str, **fields: object) -> UrlRow:
    values: dict[str, object] = {
        "http_status": None,
        "attempts": 0,
        "sha256": "",
        "raw_path": "",
        **fields,
    }
    return dataclasses.replace(row, outcome=outcome, reason=reason, **values)


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
                    return _result(
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
                    return _result(
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
        return _result(
            row,
            "timeout",
            f"No complete answer within the {options.timeout_s:g} s deadline "
            f"({attempts} attempt{'s' if attempts != 1 else ''}{detail})",
            http_status=last.http_status if last else None,
            attempts=attempts,
        )
    except Exception as exc:  # one URL's failure never escapes: it becomes its row
        return _result(
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
                return _result(row, "http_error", reason, http_status=status)
            return await _save_body(row, response, raw_dir, options)
    except aiohttp.ClientSSLError as exc:  # a bad certificate does not get better by retrying
        return _result(row, "connection_error", f"{type(exc).__name__}: {exc}")
    except aiohttp.TooManyRedirects as exc:  # a loop or an over-long chain: final
        chain = " -> ".join(str(r.url) for r in exc.history[-3:])
        return _result(
            row,
            "connection_error",
            f"More than {options.max_redirects} redirects (a loop?); last: {chain}",
            http_status=exc.history[-1].status if exc.history else None,
        )
    except (aiohttp.InvalidUrlRedirectClientError, aiohttp.NonHttpUrlRedirectClientError) as exc:
        # A redirect to file://, ftp:// or garbage is refused, never followed.
        return _result(row, "invalid_url", f"Redirect refused: {type(exc).__name__}: {exc}")
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        return _Retry("connection_error", f"{type(exc).__name__}: {exc}")
    except TimeoutError as exc:
        # aiohttp's own per-attempt timeout; the per-URL deadline cancels instead, so it
        # reaches _fetch_row as TimeoutError only at the `async with asyncio.timeout_at` exit.
        message = f": {exc}" if str(exc) else ""
        return _Retry(
            "timeout", f"Attempt timed out after {options.attempt_timeout_s:g} s{message}"
        )


async def _save_body(
    row: UrlRow, response: aiohttp.ClientResponse, raw_dir: Path, options: DownloadOptions
) -> UrlRow:
    """Read the body (stopping at the byte cap); keep it under its sha256 if it is an image.

    Bodies up to _SPILL_BYTES stay in memory and are written in one go, on the event loop:
    open, write and rename of a small file into the page cache cost less than the hop to a
    worker thread and back (which cost more CPU per URL than the write itself). Larger
    bodies stream to a temporary file. Either way the file appears under its final name
    only when complete (temporary file + rename).
    """
    status = response.status
    content_type = response.headers.get("Content-Type", "")
    declared = response.content_length
    if declared is not None and declared > options.max_bytes:
        response.close()
        return _result(
            row,
            "too_large",
            f"Content-Length {declared} is over the {options.max_bytes} byte cap",
            http_status=status,
        )
    digest = hashlib.sha256()
    head = b""
    size = 0
    ext: str | None = None
    buffer = bytearray()
    spill: BinaryIO | None = None
    tmp: Path | None = None
    kept = False
    try:
        async for chunk in response.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > options.max_bytes:
                response.close()  # stop the transfer now, whatever Content-Length said
                return _result(
                    row,
                    "too_large",
                    f"Body passed the {options.max_bytes} byte cap; reading stopped",
                    http_status=status,
                )
            if len(head) < _HEAD:
                head += chunk[: _HEAD - len(head)]
                if len(head) == _HEAD:
                    ext = sniff_extension(head)
                    if ext is None:
                        response.close()  # no need to read the rest of a web page
                        return _not_image(row, status, content_type, head)
            digest.update(chunk)
            if spill is not None:
                spill.write(chunk)  # small writes land in the page cache
            else:
                buffer += chunk
                if len(buffer) > _SPILL_BYTES:  # rare: open the file here, not in a thread,
                    fd, name = tempfile.mkstemp(dir=raw_dir, prefix=TEMP_PREFIX, suffix=".tmp")
                    tmp = Path(name)  # so that a cancellation always knows what to remove
                    spill = os.fdopen(fd, "wb")
                    spill.write(buffer)
                    buffer = bytearray()
        if size == 0:
            return _result(row, "empty", "Zero-byte body", http_status=status)
        if ext is None:
            ext = sniff_extension(head)  # a body shorter than _HEAD
            if ext is None:
                return _not_image(row, status, content_type, head)
        sha256 = digest.hexdigest()
        name = f"{sha256}.{ext}"
        if spill is not None and tmp is not None:
            spill.close()
            # Content-addressed: the same bytes land on the same name, so replacing is harmless.
            os.replace(tmp, raw_dir / name)
        else:
            write_new_file(os.path.join(raw_dir, name), buffer)
        kept = True
        return _result(
            row,
            "ok",
            f"{size} bytes, {content_type or 'no Content-Type'}",
            http_status=status,
            sha256=sha256,
            raw_path=f"raw/{name}",
        )
    finally:
        if spill is not None:
            spill.close()
        if tmp is not None and not kept:  # every other path, cancellation included
            tmp.unlink(missing_ok=True)


def _not_image(row: UrlRow, status: int, content_type: str, head: bytes) -> UrlRow:
    return _result(
        row,
        "not_image",
        f"Not an image: Content-Type '{content_type or 'none'}', starts with {head!r}",
        http_status=status,
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
