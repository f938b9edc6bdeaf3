"""Checking one downloaded file: decode it, hash it, store the verified image.

This is the per-file work of verification (``tasks.verify``), kept apart so that the worker
processes it runs in import only Pillow and numpy: a worker imports the
module of the function it runs, and ``tasks.verify`` imports Prefect (about 4 s each).
Nothing here may import Prefect, ``tasks.verify`` or ``tasks.dedup``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ursa.images import ImageError, decode_image

# Where a verified image may lie, in the order looked for: kept as downloaded, or re-encoded.
STORED_EXTENSIONS = ("jpg", "png")


@dataclass(frozen=True)
class FileCheck:
    """One distinct downloaded file to check: plain paths, cheap to send to a worker."""

    raw: Path  # where the downloader put it
    images: Path  # the folder of verified images, named by the raw file's sha256
    sha256: str
    quarantine: Path  # the quarantine root
    max_pixels: int
    min_side: int


@dataclass(frozen=True)
class Verdict:
    width: int | None = None
    height: int | None = None
    pixel_hash: str = ""
    phash: str = ""
    image: Path | None = None  # the verified image; None when the file is refused
    reason: str = ""  # an ImageError reason; empty when the image is good
    message: str = ""
    source: Path | None = None  # the file the bytes came from (raw or already quarantined)


def check_file(job: FileCheck) -> Verdict:
    """Decode one file, hash it and store its verified image; no quarantine move here.

    The verified image is the downloaded file itself (``<sha256>.jpg`` or ``.png``, same
    bytes) when it already decodes to plain RGB: re-encoding a photo as PNG costs ten times
    its decode and its file is about nine times larger, for the very same pixels. Anything
    else (CMYK, palette, alpha, 16-bit, rotated, animated, WebP, ...) is stored as the RGB
    PNG of what it decodes to. The hashes are taken from the decoded image, here in the
    worker, so that they too run in parallel.
    """
    for ext in STORED_EXTENSIONS:
        stored = job.images / f"{job.sha256}.{ext}"
        if stored.exists():
            # Content addressed: an earlier run verified these very bytes. A full decode of
            # the original is needed again only if the limits have since been tightened.
            with Image.open(stored) as im:
                width, height = im.size
                if width * height <= job.max_pixels and min(width, height) >= job.min_side:
                    return _good(im.convert("RGB"), stored, source=job.raw)
            break
    source = job.raw
    if not source.exists():
        # An earlier run may have quarantined it already: judge it again where it lies.
        found = sorted(job.quarantine.glob(f"*/{job.raw.name}"))
        if not found:
            raise FileNotFoundError(
                f"Downloaded file {job.raw} is missing (and not in {job.quarantine})."
            )
        source = found[0]
    data = source.read_bytes()
    try:
        decoded = decode_image(data, job.max_pixels, job.min_side)
    except ImageError as exc:
        return Verdict(reason=exc.reason, message=str(exc), source=source)
    if decoded.keep_as_is:
        stored = job.images / f"{job.sha256}.{decoded.extension}"
        _link_or_copy(source, stored, data)
    else:
        stored = job.images / f"{job.sha256}.png"
        # Level 1: five times faster than the default 6 on photos, files about 7% larger.
        _write_atomically(stored, lambda fh: decoded.image.save(fh, "PNG", compress_level=1))
    return _good(decoded.image, stored, source=source)


def check_files(jobs: list[FileCheck]) -> list[Verdict]:
    """check_file for each job, in order: one message to a worker process for many files."""
    return [check_file(job) for job in jobs]


def _good(image: Image.Image, stored: Path, source: Path) -> Verdict:
    return Verdict(
        width=image.width,
        height=image.height,
        pixel_hash=pixel_hash(image),
        phash=f"{phash(image):016x}",
        image=stored,
        source=source,
    )


def _link_or_copy(source: Path, target: Path, data: bytes) -> None:
    """Give ``source`` a second name (a hard link: no bytes written), else copy ``data``.

    Safe because nothing rewrites a downloaded file in place: the downloader and the
    quarantine only ever replace names. A link is also atomic, as the copy is made to be.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        pass  # content addressed: a concurrent or earlier writer stored these very bytes
    except OSError:  # a file system without hard links
        _write_atomically(target, lambda fh: fh.write(data))


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    # Temporary file in the same folder, then rename: readers never see half an image.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def phash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash, as imagehash's ``phash`` (hash_size=8, highfreq_factor=4).

    Grayscale, 32x32 Lanczos, 2-D DCT-II, the 8x8 lowest frequencies, bit = coefficient >
    their median; bits read row by row, the first one most significant.
    """
    pixels = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), float)
    low = _DCT_LOW @ pixels @ _DCT_LOW.T
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


# The 8 lowest rows of the 32-point DCT-II matrix, as scipy.fft.dct (type 2, unnormalised)
# computes it: a product of small matrices is the same transform without importing scipy
# (half a second of every worker's start).
_DCT_LOW = 2 * np.cos(np.pi * np.outer(np.arange(8), 2 * np.arange(32) + 1) / 64)


def pixel_hash(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and the size: equal for one picture in two encodings."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}\n".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()
