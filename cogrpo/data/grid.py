"""Labelled image grids for people to look at: tiles about TILE pixels on their long side whatever the model's
resolution (16 px shapes are enlarged pixel by pixel, 1024 px images shrunk), and at most MAX_TILES of them, so a
grid stays a few megabytes wherever it is built."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

OK, WRONG, NEUTRAL = (0, 130, 0), (200, 0, 0), (40, 40, 40)
TILE = 256
MAX_TILES = 64
CAPTION = 28


def tile_size(h: int, w: int) -> tuple[int, int]:
    """(width, height) of an image's tile: small images by a whole factor (crisp pixels), large ones shrunk."""
    long_side = max(h, w)
    factor = TILE // long_side if long_side <= TILE else TILE / long_side
    return max(1, round(w * factor)), max(1, round(h * factor))


def image_grid(images: np.ndarray, labels: list[str], correct: list[bool | None], columns: int = 4) -> Image.Image:
    """Tiles of the first MAX_TILES images with a caption each, green when correct, red when wrong."""
    tile_w, image_h = tile_size(*images.shape[1:3])
    tile_h = image_h + CAPTION
    count = min(len(images), MAX_TILES)
    rows = -(-count // columns)
    grid = Image.new("RGB", (columns * (tile_w + 4) + 4, rows * (tile_h + 4) + 4), (170, 170, 170))
    draw = ImageDraw.Draw(grid)
    enlarge = tile_w >= images.shape[2]
    for i, (image, label, ok) in enumerate(zip(images[:count], labels[:count], correct[:count], strict=True)):
        x, y = 4 + (i % columns) * (tile_w + 4), 4 + (i // columns) * (tile_h + 4)
        resample = Image.NEAREST if enlarge else Image.LANCZOS
        grid.paste(Image.fromarray(image).resize((tile_w, image_h), resample), (x, y))
        draw.rectangle((x, y + image_h, x + tile_w - 1, y + tile_h - 1), fill=(255, 255, 255))
        color = NEUTRAL if ok is None else OK if ok else WRONG
        text = label.removeprefix("a photo of ")
        draw.text((x + 2, y + image_h + 2), text[:40], fill=color)
        draw.text((x + 2, y + image_h + 14), text[40:80], fill=color)
    return grid
