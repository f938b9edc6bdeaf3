"""URL lists: ``<label>.txt`` files, one URL per line, read into manifest rows."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from tasks.manifest import UrlRow

# Whitespace around a URL, with what str.strip misses though an editor shows nothing: a
# byte-order mark (also where files were concatenated) and zero-width spaces and joiners.
_PADDING = re.compile(r"^[\s\ufeff\u200b-\u200d\u2060]+|[\s\ufeff\u200b-\u200d\u2060]+$")


def read_url_lists(source: Path) -> list[UrlRow]:
    """:func:`iter_url_lists` as a list."""
    return list(iter_url_lists(source))


def iter_url_lists(source: Path) -> Iterator[UrlRow]:
    """Rows from a folder of ``<label>.txt`` files (label = file stem) or from one such file,
    read line by line: memory stays flat however long the lists are.

    One URL per line (any line ending); blank lines and ``#`` comments are skipped,
    whitespace is stripped (zero-width marks too), query strings are kept. A leading UTF-8
    byte-order mark, which Windows editors write, is not part of the first URL. Labels come
    sorted, lines in file order. A missing source raises here, before any row is read.
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
    return _rows(files)


def _rows(files: list[Path]) -> Iterator[UrlRow]:
    for path in files:
        with open(path, encoding="utf-8-sig") as fh:
            for text in fh:
                # str.splitlines also ends a line at \v, \f, \x1c-\x1e, \x85, \u2028 and
                # \u2029, which a text file's universal newlines do not.
                for line in text.splitlines():
                    url = _PADDING.sub("", line)
                    if url and not url.startswith("#"):
                        yield UrlRow(url=url, label=path.stem)
