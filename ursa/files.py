"""Writing files so that a reader never sees half of one: a temporary file, then a rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TEMP_PREFIX = ".part-"  # temporary files of content-addressed writes: a killed run's leftovers


@contextlib.contextmanager
def atomic_writer(path: Path, binary: bool = False) -> Iterator[IO]:
    """A file handle (text, or bytes when ``binary``) whose content appears at ``path`` all at
    once when the block ends (readers see the old file or the new one), and nowhere if it
    raises. Lines written to it stream to disk: a long manifest is never held in memory whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    opened = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")
    try:
        with opened as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all at once: readers see the old file or the new one."""
    with atomic_writer(path, binary=True) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` all at once: readers see the old file or the new one."""
    with atomic_writer(path) as fh:
        fh.write(text)


def write_new_file(target: str | os.PathLike[str], data: bytes | bytearray) -> None:
    """Store ``data`` at ``target`` atomically, unless it exists: its name is the hash of these
    bytes (content addressed), so an existing file already holds them.

    The temporary name carries the process id: writers in other processes (shards on a
    shared folder) never share one, and within a process this function does not yield.
    """
    if os.path.exists(target):
        return
    head, name = os.path.split(os.fspath(target))
    tmp = os.path.join(head, f"{TEMP_PREFIX}{name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
