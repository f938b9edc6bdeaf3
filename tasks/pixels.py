"""Images to training pixels, a chunk at a time: what the cache builder's workers run, by
:func:`ursa.images.input_pixels` (the one image-to-pixels function of training and serving).

Light on purpose (Pillow and numpy only): a worker process imports this module, and torch or
Prefect would cost each worker seconds before its first image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ursa.images import input_pixels


@dataclass(frozen=True)
class DecodeChunk:
    """Images ``start ..`` of a ``.npy`` file to fill: plain paths, cheap to send to a worker."""

    target: str  # an (N, 3, size, size) uint8 .npy file, already at its full size
    offset: int  # where its pixels begin (after the header)
    start: int
    paths: tuple[str, ...]
    size: int
    resize: str  # ursa.images' policy: what serving applies too


def decode_chunk(chunk: DecodeChunk) -> int:
    """Decode ``chunk.paths`` into their rows of ``chunk.target``; returns how many.

    One positioned write per image, not a write through a memory map: each page first
    written through a map faults and allocates its block on the spot, and the workers' faults
    on one file queue behind each other (BENCHMARKS.md: two processes ran slower than one). A
    write goes to the page cache with its blocks allocated later, in bulk; the worker holds
    one image at a time whatever the file's size.
    """
    image_bytes = 3 * chunk.size * chunk.size
    fd = os.open(chunk.target, os.O_WRONLY)
    try:
        for i, path in enumerate(chunk.paths):
            pixels = np.ascontiguousarray(
                input_pixels(path, chunk.size, chunk.resize).transpose(2, 0, 1)
            )
            os.pwrite(fd, pixels, chunk.offset + (chunk.start + i) * image_bytes)
    finally:
        os.close(fd)
    return len(chunk.paths)
