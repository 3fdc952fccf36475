"""An exact GenEval-style judge for the shapes world.

Detection: connected components (4-connectivity) per palette colour; a component is an object only if it is
exactly the canonical mask of a class (so bars, speckle, merged blobs and fragments never count). Judgement
follows GenEval's rules: an include entry needs at least `count` matching objects, an exclude entry fewer than
`count`, and a positioned entry must stand in its relation to every object of its reference entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cogrpo.data.geneval import summarize
from cogrpo.data.world import CLASSES, COLORS, H, PALETTE, SHAPE_MASKS, W, to_palette
from cogrpo.rewards.interface import Reward

POSITION_MARGIN = 1.0  # pixels between centroids before a relation counts


@dataclass(frozen=True)
class DetectedObject:
    color: str
    cls: str  # a class name, or "other" for components that are not exactly a shape
    cx: float
    cy: float


@dataclass(frozen=True)
class Judgement:
    strict: float  # 1.0 if every include / exclude / position constraint holds, as GenEval's `correct`
    partial: float  # fraction of those constraints that hold
    reason: str  # what failed, empty when correct


def _classify(component: np.ndarray) -> str:
    for cls, mask in SHAPE_MASKS.items():
        if component.shape == mask.shape and np.array_equal(component, mask):
            return cls
    return "other"


def _world_scale(image: np.ndarray) -> int | None:
    """Pixels per world pixel when the image is an integer upscaling of the world, else None."""
    h, w = image.shape[:2]
    return None if h % H or w % W or h // H != w // W else h // H


def judgeable(image: np.ndarray, record: dict) -> bool:
    """Whether the judge can read a sample: a world-sized image for a metadata record of the world's classes and
    colours. A real model's (a free prompt, a COCO class, any image size) is not, and is left unscored, not 0."""
    entries = [*record.get("include", ()), *record.get("exclude", ())]
    return (bool(record.get("include")) and _world_scale(image) is not None
            and all(e["class"] in CLASSES and e.get("color", COLORS[0]) in COLORS for e in entries))


def to_world_grid(image: np.ndarray) -> np.ndarray:
    """RGB image -> palette grid at world resolution (integer-upscaled images are subsampled)."""
    k = _world_scale(image)
    if k is None:
        raise ValueError(f"image of size {image.shape[0]}x{image.shape[1]} is not an integer multiple of the {H}x{W} "
                         "world")
    return to_palette(image[k // 2:: k, k // 2:: k])


def detect(image: np.ndarray) -> list[DetectedObject]:
    grid = to_world_grid(image)
    objects = []
    for color_index in range(1, len(PALETTE)):
        labels, n = ndimage.label(grid == color_index)
        if n == 0:
            continue
        for k, box in enumerate(ndimage.find_objects(labels), start=1):
            component = labels[box] == k
            ys, xs = np.nonzero(component)
            objects.append(DetectedObject(color=PALETTE[color_index][0], cls=_classify(component),
                                          cx=box[1].start + xs.mean() + 0.5, cy=box[0].start + ys.mean() + 0.5))
    return objects


def _holds(relation: str, a: DetectedObject, b: DetectedObject) -> bool:
    """Whether a stands `relation` of b."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    return {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[relation] > POSITION_MARGIN


def _describe(entry: dict) -> str:
    return " ".join(filter(None, [entry.get("color"), entry["class"]]))


def judge(objects: list[DetectedObject], record: dict) -> Judgement:
    def matching(entry: dict) -> list[DetectedObject]:
        return [o for o in objects if o.cls == entry["class"] and o.color == entry.get("color", o.color)]

    checks: list[bool] = []
    reasons: list[str] = []
    includes = record["include"]
    matched = [matching(entry) for entry in includes]
    for entry, found in zip(includes, matched):
        ok = len(found) >= entry["count"]
        checks.append(ok)
        if not ok:
            reasons.append(f"expected at least {entry['count']} {_describe(entry)}, found {len(found)}")
    for entry in record.get("exclude", []):
        found = matching(entry)
        ok = len(found) < entry["count"]
        checks.append(ok)
        if not ok:
            reasons.append(f"expected fewer than {entry['count']} {_describe(entry)}, found {len(found)}")
    for entry, found in zip(includes, matched):
        if "position" not in entry:
            continue
        relation, j = entry["position"]
        targets = matched[j]
        ok = bool(found and targets) and all(_holds(relation, a, b) for a in found for b in targets)
        checks.append(ok)
        if not ok:
            reasons.append(f"{_describe(entry)} not {relation} {_describe(includes[j])}")
    strict = float(all(checks))
    return Judgement(strict=strict, partial=float(np.mean(checks)), reason="; ".join(reasons))


class ShapesReward(Reward):
    """The embedded default reward; `head` picks strict (GenEval's correct) or partial credit."""

    scores = "images"

    def __init__(self, head: str = "partial", name: str | None = None):
        if head not in ("strict", "partial"):
            raise ValueError(head)
        self.head = head
        self.name = name or f"shapes_{head}"

    def judge_batch(self, images: np.ndarray, metadata: list[dict]) -> list[Judgement]:
        return [judge(detect(image), record) for image, record in zip(images, metadata, strict=True)]

    def score(self, images, prompts, metadata):
        valid = np.array([judgeable(image, record) for image, record in zip(images, metadata, strict=True)],
                         dtype=bool)
        scores = np.zeros(len(valid), dtype=np.float64)
        for i in np.flatnonzero(valid):
            scores[i] = getattr(judge(detect(images[i]), metadata[i]), self.head)
        return scores, valid


def judge_generation(records: list[dict], images: list[np.ndarray]) -> tuple[list[dict], list[Judgement]]:
    """GenEval result rows (filename, tag, prompt, correct, reason) for images[i] = the samples of records[i], and
    their judgements."""
    rows, judgements = [], []
    for index, (record, samples) in enumerate(zip(records, images, strict=True)):
        for n, j in enumerate(ShapesReward().judge_batch(samples, [record] * len(samples))):
            rows.append({"filename": f"{index:05d}/samples/{n:05d}.png", "tag": record["tag"],
                         "prompt": record["prompt"], "correct": bool(j.strict), "reason": j.reason})
            judgements.append(j)
    return rows, judgements


def geneval_summary(rows: list[dict], judgements: list[Judgement]) -> dict:
    """GenEval's overall and per-task scores, the mean strict and partial credit, and the image count."""
    return {**summarize(rows), "strict": float(np.mean([j.strict for j in judgements])),
            "partial": float(np.mean([j.partial for j in judgements])), "images": len(rows)}


def summarize_generation(records: list[dict], images: list[np.ndarray], world: str) -> tuple[dict, list[dict]]:
    """An image evaluation's summary and per-image rows, images[i] the samples of records[i]: GenEval's figures by
    the shapes judge on the shapes world's prompts; on an open world's (a real model's), which it cannot read, the
    image count alone (the config's rewards score them, and GenEval's own scorer a `generate --outdir` folder)."""
    if world != "shapes":
        return {"images": sum(len(samples) for samples in images)}, []
    rows, judgements = judge_generation(records, images)
    return geneval_summary(rows, judgements), rows


def summarize_images(records: list[dict], samples: np.ndarray, world: str) -> tuple[dict, list[dict]]:
    """`summarize_generation` of samples (len(records) * n, H, W, 3), each record's n samples together."""
    return summarize_generation(records, list(samples.reshape(len(records), -1, *samples.shape[1:])), world)
