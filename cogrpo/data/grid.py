"""Labelled image grids for people to look at."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

OK, WRONG, NEUTRAL = (0, 130, 0), (200, 0, 0), (40, 40, 40)


def image_grid(images: np.ndarray, labels: list[str], correct: list[bool | None], scale: int = 8,
               columns: int = 4) -> Image.Image:
    """Tiles of upscaled images with a caption each, green when correct, red when wrong."""
    h, w = images.shape[1:3]
    tile_w, tile_h = w * scale, h * scale + 28
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * (tile_w + 4) + 4, rows * (tile_h + 4) + 4), (170, 170, 170))
    draw = ImageDraw.Draw(grid)
    for i, (image, label, ok) in enumerate(zip(images, labels, correct, strict=True)):
        x, y = 4 + (i % columns) * (tile_w + 4), 4 + (i // columns) * (tile_h + 4)
        grid.paste(Image.fromarray(image).resize((tile_w, h * scale), Image.NEAREST), (x, y))
        draw.rectangle((x, y + h * scale, x + tile_w - 1, y + tile_h - 1), fill=(255, 255, 255))
        color = NEUTRAL if ok is None else OK if ok else WRONG
        text = label.removeprefix("a photo of ")
        draw.text((x + 2, y + h * scale + 2), text[:24], fill=color)
        draw.text((x + 2, y + h * scale + 14), text[24:48], fill=color)
    return grid
