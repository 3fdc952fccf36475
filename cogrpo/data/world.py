"""The shapes world: 16x16 images of coloured squares, circles and triangles on white.

Images live in two forms: palette-index arrays (H, W) of small ints, used for rendering and detection, and RGB
uint8 arrays (H, W, 3), the form every model, reward and file sees. Objects sit on a 2-pixel lattice with fixed
even sizes and at least a 2-pixel gap, so every shape always maps to the same 2x2-patch tokens and no patch ever
holds two colours (which is what makes the patch tokenizer exact).
"""

from __future__ import annotations

import random

import numpy as np

H = W = 16
BACKGROUND = "white"
PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    (BACKGROUND, (255, 255, 255)),
    ("red", (220, 30, 30)),
    ("green", (30, 170, 30)),
    ("blue", (30, 60, 220)),
    ("yellow", (235, 200, 0)),
    ("purple", (150, 40, 180)),
    ("black", (20, 20, 20)),
)
COLORS: tuple[str, ...] = tuple(name for name, _ in PALETTE[1:])
COLOR_INDEX = {name: i for i, (name, _) in enumerate(PALETTE)}
PALETTE_RGB = np.array([rgb for _, rgb in PALETTE], dtype=np.uint8)
CLASSES: tuple[str, ...] = ("square", "circle", "triangle")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
LATTICE = 2


def _circle(size: int) -> np.ndarray:
    c = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size]
    return (yy - c) ** 2 + (xx - c) ** 2 <= (size / 2) ** 2 * 0.95


def _stepped_triangle(size: int) -> np.ndarray:
    """Apex-up pyramid whose rows widen by one lattice step every lattice rows."""
    m = np.zeros((size, size), bool)
    for r in range(size):
        w = LATTICE * (r // LATTICE + 1)
        m[r, (size - w) // 2 : (size + w) // 2] = True
    return m


# The canonical mask of each class. The detector accepts exactly these shapes and nothing else.
SHAPE_MASKS: dict[str, np.ndarray] = {
    "square": np.ones((4, 4), bool),
    "circle": _circle(6),
    "triangle": _stepped_triangle(6),
}


def to_rgb(palette_images: np.ndarray) -> np.ndarray:
    """Palette indices (..., H, W) -> RGB uint8 (..., H, W, 3)."""
    return PALETTE_RGB[palette_images]


def to_palette(rgb: np.ndarray) -> np.ndarray:
    """RGB (..., H, W, 3) -> palette indices by nearest palette colour (exact for rendered images)."""
    diff = rgb[..., None, :].astype(np.int32) - PALETTE_RGB.astype(np.int32)
    return np.argmin((diff * diff).sum(-1), axis=-1)


def _place(img: np.ndarray, occupied: np.ndarray, color: str, cls: str, rng: random.Random,
           region: tuple[float, float, float, float] | None = None, tries: int = 200) -> bool:
    """Place one object on the lattice with a free margin; region bounds its centre (x0, x1, y0, y1)."""
    mask = SHAPE_MASKS[cls]
    h, w = mask.shape
    for _ in range(tries):
        y = rng.randint(0, (H - h) // LATTICE) * LATTICE
        x = rng.randint(0, (W - w) // LATTICE) * LATTICE
        if region is not None:
            cx, cy = x + w / 2, y + h / 2
            x0, x1, y0, y1 = region
            if not (x0 <= cx <= x1 and y0 <= cy <= y1):
                continue
        if occupied[max(0, y - 1): y + h + 1, max(0, x - 1): x + w + 1].any():
            continue
        img[y: y + h, x: x + w][mask] = COLOR_INDEX[color]
        occupied[y: y + h, x: x + w] = True
        return True
    return False


# Where the centre of an object may go so that `relation` holds against an object in the opposite half.
_HALVES = {
    "left of": ((0, W / 2 - 1, 0, H), (W / 2 + 1, W, 0, H)),
    "right of": ((W / 2 + 1, W, 0, H), (0, W / 2 - 1, 0, H)),
    "above": ((0, W, 0, H / 2 - 1), (0, W, H / 2 + 1, H)),
    "below": ((0, W, H / 2 + 1, H), (0, W, 0, H / 2 - 1)),
}


def render(record: dict, rng: random.Random, max_tries: int = 100) -> np.ndarray:
    """Render a GenEval metadata record as a palette image that satisfies it exactly.

    Each include entry becomes exactly `count` objects (one colour per entry, random when the entry names
    none); an entry with `position: [relation, j]` is placed so that it is `relation` of entry j.
    """
    includes = record["include"]
    colors = [entry.get("color") or rng.choice(COLORS) for entry in includes]
    for _ in range(max_tries):
        img = np.zeros((H, W), np.int64)
        occupied = np.zeros((H, W), bool)
        regions: list = [None] * len(includes)
        for i, entry in enumerate(includes):
            if "position" in entry:
                relation, j = entry["position"]
                regions[i], regions[j] = _HALVES[relation]
        ok = all(
            _place(img, occupied, colors[i], entry["class"], rng, regions[i])
            for i, entry in enumerate(includes)
            for _ in range(entry["count"])
        )
        if ok:
            return img
    raise RuntimeError(f"could not render record {record['prompt']!r}")
