"""Where URL lists come from: a folder of ``<class>.txt`` files, or the embedded default."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.download import read_url_lists
from tasks.manifest import UrlRow
from ursa.embedded import write_embedded_images
from ursa.imagehost import ImageHost

EMBEDDED = "embedded"


@contextmanager
def url_rows(
    source: str, data_dir: Path, max_per_class: int | None = None
) -> Iterator[list[UrlRow]]:
    """Yields one row per listed URL of ``source``, at most ``max_per_class`` real ones a class.

    ``"embedded"`` writes scikit-learn's bundled digits as image files, publishes them (and the
    junk real lists hold) from a local image host on 127.0.0.1 for the duration of the block,
    and yields the rows of the per-class lists that host exports (the junk comes on top of
    ``max_per_class``). Anything else is a path to URL lists.
    """
    if source == EMBEDDED:
        images = write_embedded_images(data_dir / "embedded")
        with ImageHost(images) as host:
            yield read_url_lists(host.write_url_lists(data_dir / "urls", max_per_class))
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"URL list source '{source}' does not exist: give a folder of <class>.txt files, "
            f"one such file, or '{EMBEDDED}'."
        )
    yield limit_per_class(read_url_lists(path), max_per_class)


def limit_per_class(rows: list[UrlRow], max_per_class: int | None) -> list[UrlRow]:
    """The first ``max_per_class`` URLs of each class, in list order (None: all of them)."""
    if max_per_class is None:
        return rows
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1 or None, got {max_per_class}.")
    taken: Counter[str] = Counter()
    kept = []
    for row in rows:
        if taken[row.label] < max_per_class:
            taken[row.label] += 1
            kept.append(row)
    return kept
