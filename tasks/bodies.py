"""Response bodies into ``raw/``: read up to a byte cap, sniffed, kept under their sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import aiohttp

from tasks.manifest import UrlRow, with_outcome
from ursa.files import TEMP_PREFIX, write_new_file
from ursa.images import sniff_extension

_CHUNK = 64 * 1024
_HEAD = 16  # enough bytes for every signature that sniff_extension knows
_SPILL_BYTES = 256 * 1024  # bodies up to this stay in memory: at most concurrency x this


async def save_body(
    row: UrlRow, response: aiohttp.ClientResponse, raw_dir: Path, max_bytes: int
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
    if declared is not None and declared > max_bytes:
        response.close()
        return with_outcome(
            row,
            "too_large",
            f"Content-Length {declared} is over the {max_bytes} byte cap",
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
            if size > max_bytes:
                response.close()  # stop the transfer now, whatever Content-Length said
                return with_outcome(
                    row,
                    "too_large",
                    f"Body passed the {max_bytes} byte cap; reading stopped",
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
            return with_outcome(row, "empty", "Zero-byte body", http_status=status)
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
        return with_outcome(
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
    return with_outcome(
        row,
        "not_image",
        f"Not an image: Content-Type '{content_type or 'none'}', starts with {head!r}",
        http_status=status,
    )
