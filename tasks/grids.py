"""Captioned image grids (top losses, top suspects), drawn with Pillow.

A grid of a dozen small images is mostly text layout; matplotlib spent about 0.6 s of CPU on
one (twelve axes, each laid out by ``tight_layout``), once per trial. Pillow draws the same
picture in milliseconds.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 128  # pixels per image in the grid
COLUMNS = 4
FONT_SIZE = 12
PAD = 6


def image_grid(
    images: np.ndarray, captions: list[str], title: str, columns: int = COLUMNS
) -> Image.Image:
    """Images (uint8, N x 3 x S x S) in a grid, each with its caption (one or more lines)
    under it and ``title`` on top. Small images are enlarged with square pixels, so that what
    the model saw stays visible."""
    if len(images) != len(captions):
        raise ValueError(f"image_grid got {len(images)} images but {len(captions)} captions.")
    font = ImageFont.load_default(size=FONT_SIZE)
    line = FONT_SIZE + 3
    caption_lines = max((c.count("\n") + 1 for c in captions), default=1)
    cols = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / cols))
    cell_w, cell_h = TILE + 2 * PAD, TILE + PAD + caption_lines * line + PAD
    header = 2 * line
    grid = Image.new("RGB", (cols * cell_w, header + rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((PAD, PAD), title, fill="black", font=font)
    for k, (image, caption) in enumerate(zip(images, captions, strict=True)):
        tile = Image.fromarray(np.ascontiguousarray(np.transpose(image, (1, 2, 0))))
        small = max(tile.size) < TILE
        tile = tile.resize((TILE, TILE), Image.NEAREST if small else Image.LANCZOS)
        x, y = (k % cols) * cell_w + PAD, header + (k // cols) * cell_h
        grid.paste(tile, (x, y))
        draw.multiline_text((x, y + TILE + PAD // 2), caption, fill="black", font=font)
    return grid
