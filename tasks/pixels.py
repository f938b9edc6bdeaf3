"""Images to training pixels, one image at a time: what the cache builder's workers run.

Light on purpose (Pillow and numpy only): a spawned worker imports this module, and torch or
Prefect would cost each worker seconds before its first image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


def image_array(path: Path | str, size: int) -> np.ndarray:
    """One image file -> uint8 (size, size, 3) RGB, squashed to a square with bilinear.

    The one per-image decode of the training cache and of the cleaning step; a shared
    resize policy for training, cleaning and serving replaces it in one place.
    """
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))


@dataclass(frozen=True)
class DecodeChunk:
    """Images ``start ..`` of a ``.npy`` file to fill: plain paths, cheap to send to a worker."""

    target: str  # an (N, 3, size, size) uint8 .npy file, already at its full size
    start: int
    paths: tuple[str, ...]
    size: int


def decode_chunk(chunk: DecodeChunk) -> int:
    """Decode ``chunk.paths`` into their rows of ``chunk.target``; returns how many.

    Written through a memory map: the pixels go to the page cache, not to this process's
    heap, so a worker holds one image at a time whatever the file's size.
    """
    out = np.load(chunk.target, mmap_mode="r+")
    for i, path in enumerate(chunk.paths):
        out[chunk.start + i] = image_array(path, chunk.size).transpose(2, 0, 1)
    # No flush here: the pages are in the page cache, which every process sees, and an msync
    # per chunk would also write out the other workers' pages of the same file and wait for
    # the disk. The builder syncs each file once, at the end.
    del out
    return len(chunk.paths)
