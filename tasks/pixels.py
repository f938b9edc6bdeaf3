"""Images to training pixels, a chunk at a time: what the cache builder's workers run, by
:func:`ursa.images.input_pixels` (the one image-to-pixels function of training and serving).

Light on purpose (Pillow and numpy only): a spawned worker imports this module, and torch or
Prefect would cost each worker seconds before its first image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ursa.images import input_pixels


@dataclass(frozen=True)
class DecodeChunk:
    """Images ``start ..`` of a ``.npy`` file to fill: plain paths, cheap to send to a worker."""

    target: str  # an (N, 3, size, size) uint8 .npy file, already at its full size
    start: int
    paths: tuple[str, ...]
    size: int
    resize: str  # ursa.images' policy: what serving applies too


def decode_chunk(chunk: DecodeChunk) -> int:
    """Decode ``chunk.paths`` into their rows of ``chunk.target``; returns how many.

    Written through a memory map: the pixels go to the page cache, not to this process's
    heap, so a worker holds one image at a time whatever the file's size.
    """
    out = np.load(chunk.target, mmap_mode="r+")
    for i, path in enumerate(chunk.paths):
        out[chunk.start + i] = input_pixels(path, chunk.size, chunk.resize).transpose(2, 0, 1)
    out.flush()
    del out
    return len(chunk.paths)
