"""The reward contract every scorer implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch


class Reward(ABC):
    """score(images, prompts, metadata) -> (scores, valid).

    images: uint8 RGB (B, H, W, 3). scores: float64 (B,). valid: bool (B,), False where the scorer could not
    judge a sample (its score is then meaningless and must be masked). No hidden global state; the runtime bounds
    a whole call in time (a reward that talks to a server, like the VLM judge, also bounds each request).
    """

    name: str
    scores: ClassVar[str]  # what it scores: "images" or "texts" (a config pairs it with a family that makes those)

    @abstractmethod
    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        ...


def reward_device() -> str:
    """Where a model-based reward runs: the GPU when its process sees one. A Ray worker sees GPUs only if it asked
    for some (cluster.reward_gpus), so the config decides."""
    return "cuda" if torch.cuda.is_available() else "cpu"
