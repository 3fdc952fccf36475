"""Build the configured reward terms, score images with all of them, and summarise the scores."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cogrpo.proto.config import RewardConfig
from cogrpo.proto.plugins import load_plugin
from cogrpo.rewards.interface import Reward
from cogrpo.rewards.reasoning import ReasoningReward
from cogrpo.rewards.shapes import ShapesReward


def build_reward(config: RewardConfig) -> Reward:
    """Model-based rewards import their libraries (optional, slow to import) only when configured; a reward of one's
    own (kind plugin) is its class called with this section."""
    if config.kind == "shapes":
        return ShapesReward(config.head, name=config.name)
    if config.kind == "reasoning":
        return ReasoningReward(config.head, name=config.name)
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
    if config.kind == "plugin":
        reward = load_plugin(config.target)(config)
        reward.name = config.name
        return reward
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


Terms = list[tuple[np.ndarray, np.ndarray, float]]  # (scores, valid, weight) per reward term, in config order


def join_batches(per_batch: list[list[tuple[np.ndarray, np.ndarray]]], weights: Sequence[float]) -> Terms:
    """Per batch, each reward's (scores, valid), in batch order -> (scores, valid, weight) per reward."""
    return [(np.concatenate([batch[i][0] for batch in per_batch]), np.concatenate([batch[i][1] for batch in per_batch]),
             weight) for i, weight in enumerate(weights)]


def score_in_batches(rewards: list[tuple[Reward, float]], images: np.ndarray, metadata: list[dict],
                     batch_size: int) -> Terms:
    """Every reward over images[k] (the sample of metadata[k]), batch_size images per call: a reward model sees
    batches of the size it sees in training, however many images an evaluation makes."""
    per_batch = []
    for start in range(0, len(images), batch_size):
        chunk = metadata[start: start + batch_size]
        per_batch.append([score_one(reward, images[start: start + batch_size], [r["prompt"] for r in chunk], chunk)
                          for reward, _ in rewards])
    return join_batches(per_batch, [weight for _, weight in rewards])


def mask_unscored(terms: Terms) -> Terms:
    """A NaN (or infinite) score is no score: it counts as invalid everywhere after this."""
    return [(scores, valid & np.isfinite(scores), weight) for scores, valid, weight in terms]


def reward_stats(configs: Sequence[RewardConfig], terms: Terms) -> dict:
    """`reward/<name>` and `reward_std/<name>`: each term's mean and spread over its valid samples (NaN if none)."""
    row = {}
    for reward, (scores, valid, _) in zip(configs, terms, strict=True):
        values = scores[valid]
        row[f"reward/{reward.name}"] = float(np.mean(values)) if len(values) else float("nan")
        row[f"reward_std/{reward.name}"] = float(np.std(values)) if len(values) else float("nan")
    return row
