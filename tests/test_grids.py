"""Captioned image grids drawn with Pillow (top losses, top suspects)."""

import numpy as np
import pytest

from tasks.grids import FONT_SIZE, PAD, TILE, image_grid


def test_grid_places_every_image_enlarged_under_the_title():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 16, 16), dtype=np.uint8)
    grid = image_grid(images, [f"{k}/7\nloss {k}.0" for k in range(5)], "top losses", columns=4)
    assert grid.mode == "RGB"
    assert grid.width == 4 * (TILE + 2 * PAD)
    pixels = np.asarray(grid)
    line = FONT_SIZE + 3
    header, cell_height = 2 * line, TILE + PAD + 2 * line + PAD  # two caption lines
    assert grid.height == header + 2 * cell_height
    # Second row, first tile: image 4, enlarged 8x with square pixels (nearest neighbour).
    top = header + cell_height
    tile = pixels[top : top + TILE, PAD : PAD + TILE]
    expected = np.repeat(np.repeat(images[4].transpose(1, 2, 0), 8, 0), 8, 1)
    assert np.array_equal(tile, expected)
    # The caption under it is drawn (dark pixels below the tile), the empty cells stay white.
    assert (pixels[top + TILE : top + cell_height, PAD : PAD + TILE] < 128).any()
    assert (pixels[top:, 2 * (TILE + 2 * PAD) :] == 255).all()


def test_grid_refuses_captions_that_do_not_match_the_images():
    images = np.zeros((3, 3, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        image_grid(images, ["a", "b"], "t")
