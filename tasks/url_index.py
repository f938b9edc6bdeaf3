"""Per-URL state of a download run, on disk: the URLs seen so far (and where), the rows an
earlier run settled (from the journal), the URLs the compacted journal holds.

A private temporary SQLite database (``sqlite3.connect("")``): it lives in SQLite's page
cache up to a few MiB and spills to a temporary file past that, which SQLite deletes when
the connection closes. A Python dict or set of the same would grow by hundreds of bytes per
URL for the whole run; here memory stays flat however many URLs there are, for about a
microsecond or two per look-up.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from types import TracebackType

from tasks.manifest import UrlRow

_CACHE_KIB = 4 * 1024  # SQLite's page cache for this database: what it holds in memory at most

_SCHEMA = """
CREATE TABLE settled (url TEXT PRIMARY KEY, row TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE seen (url TEXT PRIMARY KEY, position INTEGER NOT NULL, label TEXT NOT NULL)
    WITHOUT ROWID;
CREATE TABLE journaled (url TEXT PRIMARY KEY) WITHOUT ROWID;
"""


class UrlIndex:
    """What a download run knows per URL, kept out of Python memory. Used from one thread."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")
        self._db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        self._db.executescript(_SCHEMA)
        self._any_settled = False

    def __enter__(self) -> UrlIndex:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._db.close()  # and SQLite deletes its temporary file

    def add_settled(self, rows: Iterable[UrlRow]) -> None:
        """Rows an earlier run settled, in journal order: a later row of a URL replaces an
        earlier one."""
        self._db.executemany(
            "INSERT OR REPLACE INTO settled VALUES (?, ?)",
            ((r.url, json.dumps(vars(r))) for r in rows),
        )
        self._db.commit()
        self._any_settled = self._db.execute("SELECT 1 FROM settled LIMIT 1").fetchone() is not None

    def settled(self, url: str) -> UrlRow | None:
        """The row an earlier run settled for ``url``, if any."""
        if not self._any_settled:
            return None
        found = self._db.execute("SELECT row FROM settled WHERE url = ?", (url,)).fetchone()
        return None if found is None else UrlRow(**json.loads(found[0]))

    def first_seen(self, url: str, position: int, label: str) -> tuple[int, str] | None:
        """None the first time ``url`` is seen (recorded at ``position``, with ``label``);
        after that, the position and label of its first row."""
        added = self._db.execute(
            "INSERT OR IGNORE INTO seen VALUES (?, ?, ?)", (url, position, label)
        )
        if added.rowcount == 1:
            return None
        return self._db.execute("SELECT position, label FROM seen WHERE url = ?", (url,)).fetchone()

    def first_journaled(self, url: str) -> bool:
        """Whether ``url`` is new to the compacted journal (and now recorded there)."""
        return self._db.execute("INSERT OR IGNORE INTO journaled VALUES (?)", (url,)).rowcount == 1

    def commit(self) -> None:
        """End the open transaction: its pages may then leave memory for the temporary file."""
        self._db.commit()
