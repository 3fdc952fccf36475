"""Group-relative advantages: G samples per prompt, each reward normalised within its group, weighted, summed."""

from __future__ import annotations

import numpy as np


def group_normalize(scores: np.ndarray, groups: np.ndarray, valid: np.ndarray, eps: float) -> np.ndarray:
    """(r - mean) / (std + eps) within each group over its valid samples; zero variance gives exactly 0."""
    out = np.zeros(len(scores))
    for g in np.unique(groups):
        members = (groups == g) & valid
        if members.sum() < 2:
            continue
        r = scores[members]
        std = r.std()
        out[members] = 0.0 if std == 0 else (r - r.mean()) / (std + eps)
    return out


def group_advantages(terms: list[tuple[np.ndarray, np.ndarray, float]], groups: np.ndarray, eps: float,
                     clip: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """terms: (scores, valid, weight) per reward. Returns (advantages, usable): a sample is usable when every
    reward judged it and its group keeps at least two such samples; unusable samples get advantage 0."""
    valid = np.logical_and.reduce([v & np.isfinite(s) for s, v, _ in terms])
    usable = valid.copy()
    for g in np.unique(groups):
        members = groups == g
        if (members & valid).sum() < 2:
            usable[members] = False
    adv = sum(w * group_normalize(np.where(usable, s, 0.0), groups, usable, eps) for s, _, w in terms)
    if clip is not None:
        adv = np.clip(adv, -clip, clip)
    return np.where(usable, adv, 0.0), usable
