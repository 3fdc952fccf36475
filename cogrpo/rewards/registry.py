"""Build the configured reward terms and score a batch with all of them."""

from __future__ import annotations

import numpy as np

from cogrpo.proto.config import RewardConfig
from cogrpo.rewards.interface import Reward
from cogrpo.rewards.shapes import ShapesReward


def build_reward(config: RewardConfig) -> Reward:
    """Model-based rewards import their libraries (optional, slow to import) only when configured."""
    if config.kind == "shapes":
        return ShapesReward(config.head, name=config.name)
    if config.kind == "clip":
        from cogrpo.rewards.clip import ClipReward

        return ClipReward(config.path, name=config.name)
    if config.kind == "hps":
        from cogrpo.rewards.hps import HpsReward

        return HpsReward(config.path, config.arch, name=config.name)
    if config.kind == "image_reward":
        from cogrpo.rewards.image_reward import ImageRewardScore

        return ImageRewardScore(config.path, name=config.name)
    if config.kind == "vlm_judge":
        from cogrpo.rewards.vlm_judge import VlmJudgeReward

        return VlmJudgeReward(config.judge, name=config.name)
    raise ValueError(f"unknown reward kind {config.kind!r}")


def score_one(reward: Reward, images: np.ndarray, prompts: list[str],
              metadata: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, valid) of one reward, as float64 and bool arrays."""
    scores, valid = reward.score(images, prompts, metadata)
    return np.asarray(scores, dtype=np.float64), np.asarray(valid, dtype=bool)


def score_all(rewards: list[tuple[Reward, float]], images: np.ndarray, prompts: list[str],
              metadata: list[dict]) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(scores, valid, weight) per reward term, in order."""
    return [(*score_one(reward, images, prompts, metadata), weight) for reward, weight in rewards]
