"""URL lists: ``<label>.txt`` files, one URL per line, read into manifest rows."""

from __future__ import annotations

import re
from pathlib import Path

from tasks.manifest import UrlRow

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
