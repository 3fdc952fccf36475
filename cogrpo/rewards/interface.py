"""The reward contract every scorer implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Reward(ABC):
    """score(images, prompts, metadata) -> (scores, valid).

    images: uint8 RGB (B, H, W, 3). scores: float64 (B,). valid: bool (B,), False where the scorer could not
    judge a sample (its score is then meaningless and must be masked). No hidden global state; timeouts and
    retries belong to the runtime that calls it.
    """

    name: str

    @abstractmethod
    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        ...
