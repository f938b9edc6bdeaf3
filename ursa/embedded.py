"""A real image collection that needs no network: scikit-learn's bundled handwritten digits.

1,797 8x8 scans in 10 classes ship inside scikit-learn, so the demo, the tests and the
benchmarks can build a dataset offline. The image host serves these files over HTTP.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

# Bump when the file layout or the rendering changes, so that old folders are rewritten.
_FORMAT_VERSION = 1
_MARKER = ".ursa-embedded.json"


def write_embedded_images(dest: Path, size: int = 32) -> Path:
    """Write the digits as grayscale PNGs ``dest/<label>/<index:04d>.png``; return ``dest``.

    Values 0..16 are scaled to 0..255 and upsampled to ``size`` px with bicubic resampling.
    The marker file is written last, so a folder with a matching marker is complete and is
    left untouched; anything else (no marker, other size, interrupted run) is rewritten.
    """
    if size < 8:
        raise ValueError(f"size must be at least the 8 px of the scans, got {size}.")
    from sklearn.datasets import load_digits  # slow import; only needed on a cold write

    dest = Path(dest)
    marker = dest / _MARKER
    digits = load_digits()
    expected = {"version": _FORMAT_VERSION, "size": size, "count": len(digits.target)}
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == expected:
                return dest
        except ValueError:
            pass  # an unreadable marker means an unknown state: rewrite below
        marker.unlink()

    for label in range(10):
        # Remove leftovers of another size or an interrupted run, but only our own folders.
        shutil.rmtree(dest / str(label), ignore_errors=True)
        (dest / str(label)).mkdir(parents=True)
    pixels = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    for index, (scan, label) in enumerate(zip(pixels, digits.target, strict=True)):
        # A 2-D uint8 array becomes an 8-bit grayscale ("L") image.
        image = Image.fromarray(scan).resize((size, size), Image.Resampling.BICUBIC)
        image.save(dest / str(label) / f"{index:04d}.png", format="PNG")
    marker.write_text(json.dumps(expected))
    return dest
