"""Verification: fully decode every downloaded file, keep the good ones as RGB images.

A good file is kept as it was downloaded when it is a JPEG or PNG that already decodes to
plain RGB, and as the RGB PNG of its pixels otherwise (``tasks.checks`` does the per-file
work, in worker processes).

A file that does not decode, is a decompression bomb or is too small is moved (never
deleted) to ``quarantine/<reason>/`` so that a person can look at it later, and its
manifest row says why.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from collections.abc import Sequence
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from tasks.checks import FileCheck, Verdict, check_files
from tasks.manifest import OK, UrlRow, batches, data_dir_lock, iter_rows, row_writer
from tasks.parallel import WorkerPool, usable_cores
from ursa.layout import Layout
from ursa.settings import INGEST_CHUNK_ROWS

_SHA256 = re.compile(r"[0-9a-f]{64}")
# A worker imports tasks.checks (Pillow, numpy, scipy: about half a second; its fork server
# imports the caller's main module once), which about this many files repay.
_FILES_PER_EXTRA_WORKER = 200
_CHUNK_FILES = 16  # files per message to a worker: few round trips, fine-grained balance


def verify_rows(
    rows: list[UrlRow],
    data_dir: Path,
    max_pixels: int = 40_000_000,
    min_side: int = 8,
    workers: int | None = 1,
) -> list[UrlRow]:
    """Decode each downloaded file once; return the rows (same order) with their verdicts.

    A good file's verified image is ``images/<sha256>.jpg`` or ``.png``: the downloaded bytes
    themselves when they already decode to plain RGB, else their RGB PNG (see
    :func:`tasks.checks.check_file`). ``workers`` counts this process, which checks files
    too; ``workers=None`` picks one per core once there are enough files to pay for
    starting the others, else one. Rows verified already (an ``image_path``: a shard's
    manifest part) pass through. :func:`verify_manifest` does the same from file to file.
    """
    if workers is None:
        workers = usable_cores() if _distinct_files(rows) >= _FILES_PER_EXTRA_WORKER else 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    data_dir = Path(data_dir)
    with data_dir_lock(data_dir, "verify"), WorkerPool(workers) as pool:
        _remove_stale(data_dir)
        return _verify_rows(rows, data_dir, max_pixels, min_side, pool)


def verify_manifest(
    source: Path,
    data_dir: Path,
    target: Path,
    extra: Sequence[UrlRow] = (),
    max_pixels: int = 40_000_000,
    min_side: int = 8,
    workers: int | None = None,
    chunk_rows: int = INGEST_CHUNK_ROWS,
) -> Path:
    """:func:`verify_rows` over the manifest at ``source`` and then the rows of ``extra``,
    written to the manifest ``target`` (returned), ``chunk_rows`` rows at a time: memory
    holds one chunk, whatever the length of the manifest.

    The worker processes start once, for the first chunk with enough files to pay for them,
    and serve every later chunk. A file met again in a later chunk is judged again where
    the first verdict left it, to the same verdict.
    """
    data_dir = Path(data_dir)
    rows = itertools.chain(iter_rows(Path(source), UrlRow), extra)
    cores = usable_cores() if workers is None else workers
    if cores < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    with (
        data_dir_lock(data_dir, "verify"),
        WorkerPool(cores) as pool,
        row_writer(Path(target), UrlRow) as write,
    ):
        _remove_stale(data_dir)
        serial = WorkerPool(1)  # for chunks too small to pay for a hop to a worker
        for chunk in batches(rows, chunk_rows):
            few = workers is None and not pool.started
            few = few and _distinct_files(chunk) < _FILES_PER_EXTRA_WORKER
            for row in _verify_rows(chunk, data_dir, max_pixels, min_side, serial if few else pool):
                write(row)
    return Path(target)


def _distinct_files(rows: Sequence[UrlRow]) -> int:
    return len({r.sha256 for r in rows if _to_verify(r)})


def _to_verify(row: UrlRow) -> bool:
    return row.outcome == OK and not row.image_path


def _remove_stale(data_dir: Path) -> None:
    # Under the lock, a temporary PNG can only be a killed run's half-written one.
    for stale in Layout(data_dir).images.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def _verify_rows(
    rows: Sequence[UrlRow], data_dir: Path, max_pixels: int, min_side: int, pool: WorkerPool
) -> list[UrlRow]:
    jobs: dict[str, FileCheck] = {}  # by sha256: the same bytes from two URLs are decoded once
    for row in rows:
        if not _to_verify(row) or row.sha256 in jobs:
            continue
        if not _SHA256.fullmatch(row.sha256) or not row.raw_path:
            # The sha256 names the output file: never let a malformed one build a path.
            raise ValueError(
                f"Row for {row.url!r} is 'ok' but has no valid sha256 ({row.sha256!r}) "
                f"or no raw_path ({row.raw_path!r})."
            )
        jobs[row.sha256] = FileCheck(
            raw=data_dir / row.raw_path,
            images=Layout(data_dir).images,
            sha256=row.sha256,
            quarantine=Layout(data_dir).quarantine,
            max_pixels=max_pixels,
            min_side=min_side,
        )

    # Verdicts in job order: check_files over chunks, on worker processes and this one
    # (tasks.checks imports no Prefect: a worker starts in about half a second).
    listed = list(jobs.values())
    chunks = [listed[i : i + _CHUNK_FILES] for i in range(0, len(listed), _CHUNK_FILES)]
    verdicts = [v for chunk in pool.map(check_files, chunks) for v in chunk]

    # Quarantine here, once per file: rows that share the bytes share the move.
    by_sha = {
        sha: _quarantine(verdict, Layout(data_dir).quarantine) if verdict.reason else verdict
        for sha, verdict in zip(jobs, verdicts, strict=True)
    }
    return [_apply(row, by_sha[row.sha256], data_dir) if _to_verify(row) else row for row in rows]


def _quarantine(verdict: Verdict, root: Path) -> Verdict:
    """Move the refused file to ``quarantine/<reason>/``; return the verdict with its new home."""
    assert verdict.source is not None
    target = root / verdict.reason / verdict.source.name
    if verdict.source != target:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(verdict.source, target)  # a move within the data dir, never a delete
    return dataclasses.replace(verdict, source=target)


def _apply(row: UrlRow, verdict: Verdict, data_dir: Path) -> UrlRow:
    if verdict.reason:
        assert verdict.source is not None
        return dataclasses.replace(
            row,
            outcome=verdict.reason,
            reason=verdict.message,
            raw_path=verdict.source.relative_to(data_dir).as_posix(),
        )
    assert verdict.image is not None
    return dataclasses.replace(
        row,
        image_path=verdict.image.relative_to(data_dir).as_posix(),
        width=verdict.width,
        height=verdict.height,
        pixel_hash=verdict.pixel_hash,
        phash=verdict.phash,
    )


verify_task = task(name="verify", cache_policy=NONE)(verify_manifest)
