"""An exact, lossless tokenizer for the shapes world: one token per 2x2 patch = (colour, 4-bit pattern).

Codebook: 0 is an empty (white) patch; 1 + (colour - 1) * 15 + (pattern - 1) for each colour and each of the
15 non-empty patterns, 1 + 6 * 15 = 91 codes. Exact because no rendered patch ever holds two colours.
"""

from __future__ import annotations

import numpy as np

from cogrpo.data.world import H, PALETTE, W, to_palette, to_rgb
from cogrpo.models.interface import ImageTokenizer

PATCH = 2
_PATTERNS = 2 ** (PATCH * PATCH) - 1
_BIT = 1 << np.arange(PATCH * PATCH)


class PatchTokenizer(ImageTokenizer):
    grid = (H // PATCH, W // PATCH)
    codebook_size = 1 + (len(PALETTE) - 1) * _PATTERNS

    def __init__(self) -> None:
        lut = np.zeros((self.codebook_size, PATCH, PATCH), np.int64)
        for color in range(1, len(PALETTE)):
            for pattern in range(1, _PATTERNS + 1):
                bits = ((pattern & _BIT) > 0).reshape(PATCH, PATCH)
                lut[1 + (color - 1) * _PATTERNS + (pattern - 1)] = bits * color
        self._lut = lut

    def encode_palette(self, palette_images: np.ndarray) -> np.ndarray:
        b = len(palette_images)
        gh, gw = self.grid
        patches = (palette_images.reshape(b, gh, PATCH, gw, PATCH).transpose(0, 1, 3, 2, 4)
                   .reshape(b, gh, gw, PATCH * PATCH))
        color = patches.max(-1)
        if not ((patches == 0) | (patches == color[..., None])).all():
            raise ValueError("image is not representable: a 2x2 patch holds two colours")
        pattern = ((patches > 0) * _BIT).sum(-1)
        return np.where(color > 0, 1 + (color - 1) * _PATTERNS + (pattern - 1), 0).reshape(b, -1)

    def decode_palette(self, tokens: np.ndarray) -> np.ndarray:
        b = len(tokens)
        gh, gw = self.grid
        patches = self._lut[tokens.reshape(b, gh, gw)]
        return patches.transpose(0, 1, 3, 2, 4).reshape(b, H, W)

    def encode(self, images: np.ndarray) -> np.ndarray:
        palette = to_palette(images)
        if not np.array_equal(to_rgb(palette), images):
            raise ValueError("image is not representable: colours outside the shapes palette")
        return self.encode_palette(palette)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        return to_rgb(self.decode_palette(np.asarray(tokens)))
