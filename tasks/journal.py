"""The download journal: what lets a killed download resume without fetching again.

Finished rows are appended to ``manifests/urls.journal.jsonl`` in small batches, at most
``_DELAY_S`` after they finish, and a row is reported (progress) only once its line is
written. So a run killed at any point (SIGKILL included) and run again fetches no URL whose
row it reported as settled for good (see :func:`is_settled`): at most the last batch, never
reported, is fetched again. A finished run compacts the journal to one line per URL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from tasks.manifest import UrlRow
from ursa.layout import Layout

# Statuses that may pass on a later run; every other 4xx is an answer about the URL itself.
_TRANSIENT_STATUSES = {408, 425, 429}
# Finished rows wait at most this long for their journal line: one write per batch instead of
# one per row (a system call each, a tenth of the client's CPU at a thousand rows a second).
_DELAY_S = 0.05


class Journal:
    """Finished rows, appended to the journal in batches and reported once written.

    The first row of a batch schedules its write ``_DELAY_S`` later; every row that finishes
    meanwhile joins it. ``progress(row)`` runs only after the write: what a run has reported
    survives a SIGKILL, and a kill loses at most one unreported batch (fetched again by the
    next run; its files, named by their hash, are simply written again).
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
            self._timer = asyncio.get_running_loop().call_later(_DELAY_S, self._write)

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


def settled_rows(path: Path, data_dir: Path) -> Iterator[UrlRow]:
    """The settled rows of a journal, in file order (a later row of a URL supersedes an
    earlier one); lines a kill cut short and rows whose file vanished are skipped."""
    if not path.exists():
        return
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
            yield row


class Compaction:
    """The journal of a finished run, one line per fetched URL, written as the run's rows
    come (to a temporary file that replaces the appended log when the run ends).

    ``first(url)`` says whether a URL is new to it: the caller keeps that record (on disk,
    see :mod:`tasks.url_index`), not this class.
    """

    def __init__(self, fh: TextIO, first: Callable[[str], bool]) -> None:
        self._fh = fh
        self._first = first

    def add(self, row: UrlRow) -> None:
        if row.outcome in ("invalid_url", "duplicate_url") or not self._first(row.url):
            return
        self._fh.write(_row_json(row) + "\n")


def _stored(data_dir: Path, raw_path: str) -> bool:
    """The downloaded file is in raw/, or verification has moved it to quarantine."""
    if not raw_path:
        return False
    path = data_dir / raw_path
    return path.exists() or any(Layout(data_dir).quarantine.glob(f"*/{path.name}"))
