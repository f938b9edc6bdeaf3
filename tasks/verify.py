"""Verification: fully decode every downloaded file, keep the good ones as RGB PNG.

A file that does not decode, is a decompression bomb or is too small is moved (never
deleted) to ``quarantine/<reason>/`` so that a person can look at it later, and its
manifest row says why.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from prefect import task
from prefect.cache_policies import NONE

from tasks.dedup import phash, pixel_hash
from tasks.manifest import OK, UrlRow, data_dir_lock
from ursa.images import ImageError, open_image

_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILES_PER_EXTRA_WORKER = 1000


@dataclass(frozen=True)
class _Job:
    """One distinct downloaded file to check: plain paths, cheap to send to a worker."""

    raw: Path  # where the downloader put it
    image: Path  # where the verified PNG goes
    quarantine: Path  # the quarantine root
    max_pixels: int
    min_side: int


@dataclass(frozen=True)
class _Verdict:
    width: int | None = None
    height: int | None = None
    pixel_hash: str = ""
    phash: str = ""
    reason: str = ""  # an ImageError reason; empty when the image is good
    message: str = ""
    source: Path | None = None  # the file the bytes came from (raw or already quarantined)


def verify_rows(
    rows: list[UrlRow],
    data_dir: Path,
    max_pixels: int = 40_000_000,
    min_side: int = 8,
    workers: int | None = 1,
) -> list[UrlRow]:
    """Decode each downloaded file once; return the rows (same order) with their verdicts.

    ``workers=None`` picks: one process per core once there are enough files to pay for
    starting them (each spawned worker imports this module, about a second), else one.
    """
    if workers is None:
        distinct = len({r.sha256 for r in rows if r.outcome == OK})
        workers = (os.cpu_count() or 1) if distinct >= _FILES_PER_EXTRA_WORKER else 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    data_dir = Path(data_dir)
    with data_dir_lock(data_dir, "verify"):
        # Under the lock, a temporary PNG can only be a killed run's half-written one.
        for stale in (data_dir / "images").glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        return _verify_rows(rows, data_dir, max_pixels, min_side, workers)


def _verify_rows(
    rows: list[UrlRow], data_dir: Path, max_pixels: int, min_side: int, workers: int
) -> list[UrlRow]:
    jobs: dict[str, _Job] = {}  # by sha256: the same bytes from two URLs are decoded once
    for row in rows:
        if row.outcome != OK or row.sha256 in jobs:
            continue
        if not _SHA256.fullmatch(row.sha256) or not row.raw_path:
            # The sha256 names the output file: never let a malformed one build a path.
            raise ValueError(
                f"Row for {row.url!r} is 'ok' but has no valid sha256 ({row.sha256!r}) "
                f"or no raw_path ({row.raw_path!r})."
            )
        jobs[row.sha256] = _Job(
            raw=data_dir / row.raw_path,
            image=data_dir / "images" / f"{row.sha256}.png",
            quarantine=data_dir / "quarantine",
            max_pixels=max_pixels,
            min_side=min_side,
        )

    if workers == 1 or len(jobs) < 2:
        verdicts = [_check(job) for job in jobs.values()]
    else:
        # Decoding holds the GIL, so threads would not help. "spawn" rather than fork:
        # the caller (Prefect) runs threads, and forking a threaded process can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            chunksize = max(1, len(jobs) // (workers * 8))
            verdicts = list(pool.map(_check, jobs.values(), chunksize=chunksize))

    # Quarantine here, once per file: rows that share the bytes share the move.
    by_sha = {
        sha: _quarantine(verdict, data_dir / "quarantine") if verdict.reason else verdict
        for sha, verdict in zip(jobs, verdicts, strict=True)
    }
    return [_apply(row, by_sha[row.sha256], data_dir) if row.outcome == OK else row for row in rows]


def _check(job: _Job) -> _Verdict:
    """Decode one file, hash it and write its PNG; runs in a worker process when workers > 1.

    The hashes are computed here, beside the decode, so that they too run in parallel.
    """
    if job.image.exists():
        # Content addressed: an earlier run verified these very bytes; decoding our own PNG
        # is cheaper than the original, and a full decode is needed again only if the limits
        # have since been tightened.
        with Image.open(job.image) as im:
            width, height = im.size
            if width * height <= job.max_pixels and min(width, height) >= job.min_side:
                return _good(im.convert("RGB"), source=job.raw)
    source = job.raw
    if not source.exists():
        # An earlier run may have quarantined it already: judge it again where it lies.
        found = sorted(job.quarantine.glob(f"*/{job.raw.name}"))
        if not found:
            raise FileNotFoundError(
                f"Downloaded file {job.raw} is missing (and not in {job.quarantine})."
            )
        source = found[0]
    try:
        image = open_image(source.read_bytes(), job.max_pixels, job.min_side)
    except ImageError as exc:
        return _Verdict(reason=exc.reason, message=str(exc), source=source)
    _write_png_atomically(image, job.image)
    return _good(image, source=source)


def _good(image: Image.Image, source: Path) -> _Verdict:
    return _Verdict(
        width=image.width,
        height=image.height,
        pixel_hash=pixel_hash(image),
        phash=f"{phash(image):016x}",
        source=source,
    )


def _write_png_atomically(image: Image.Image, path: Path) -> None:
    # Temporary file in the same folder, then rename: readers never see half a PNG.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            # Level 1: five times faster than the default 6 on photos, files about 7% larger.
            image.save(fh, format="PNG", compress_level=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _quarantine(verdict: _Verdict, root: Path) -> _Verdict:
    """Move the refused file to ``quarantine/<reason>/``; return the verdict with its new home."""
    assert verdict.source is not None
    target = root / verdict.reason / verdict.source.name
    if verdict.source != target:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(verdict.source, target)  # a move within the data dir, never a delete
    return dataclasses.replace(verdict, source=target)


def _apply(row: UrlRow, verdict: _Verdict, data_dir: Path) -> UrlRow:
    if verdict.reason:
        assert verdict.source is not None
        return dataclasses.replace(
            row,
            outcome=verdict.reason,
            reason=verdict.message,
            raw_path=verdict.source.relative_to(data_dir).as_posix(),
        )
    return dataclasses.replace(
        row,
        image_path=f"images/{row.sha256}.png",
        width=verdict.width,
        height=verdict.height,
        pixel_hash=verdict.pixel_hash,
        phash=verdict.phash,
    )


verify_task = task(name="verify", cache_policy=NONE)(verify_rows)
