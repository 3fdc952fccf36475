"""Sample grids: tiles about 256 px whatever the resolution, at most 64 of them."""

import numpy as np
from PIL import Image

from cogrpo.data.grid import MAX_TILES, TILE, image_grid, tile_size


def test_small_images_are_enlarged_pixel_by_pixel_and_large_ones_shrunk():
    assert tile_size(16, 16) == (TILE, TILE) and tile_size(24, 24) == (240, 240)
    assert tile_size(1024, 1024) == (TILE, TILE) and tile_size(512, 1024) == (TILE, 128)
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    grid = np.asarray(image_grid(images, ["a red square", "two circles"], [True, False]))
    first = grid[4:4 + TILE, 4:4 + TILE]
    assert np.array_equal(first, np.asarray(Image.fromarray(images[0]).resize((TILE, TILE), Image.NEAREST)))


def test_a_grid_holds_at_most_max_tiles_of_large_images():
    images = np.zeros((100, 512, 512, 3), dtype=np.uint8)
    grid = image_grid(images, ["x"] * 100, [None] * 100)
    rows = MAX_TILES // 4
    assert grid.size == (4 * (TILE + 4) + 4, rows * (TILE + 28 + 4) + 4)
