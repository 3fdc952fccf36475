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
from cogrpo.data.world import H, PALETTE, SHAPE_MASKS, W, to_palette
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


def to_world_grid(image: np.ndarray) -> np.ndarray:
    """RGB image -> palette grid at world resolution (integer-upscaled images are subsampled)."""
    h, w = image.shape[:2]
    if h % H or w % W or h // H != w // W:
        raise ValueError(f"image of size {h}x{w} is not an integer multiple of the {H}x{W} world")
    k = h // H
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
        judgements = self.judge_batch(images, metadata)
        scores = np.array([getattr(j, self.head) for j in judgements], dtype=np.float64)
        return scores, np.ones(len(scores), dtype=bool)


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


def summarize_images(records: list[dict], samples: np.ndarray) -> tuple[dict, list[dict]]:
    """An image family's evaluation summary by the shapes judge (meaningful on the shapes world) and its rows:
    samples (len(records) * n, H, W, 3), each record's n samples together."""
    per_record = samples.reshape(len(records), -1, *samples.shape[1:])
    rows, judgements = judge_generation(records, list(per_record))
    return geneval_summary(rows, judgements), rows
