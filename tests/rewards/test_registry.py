"""Scoring many images with the configured rewards, in the batches a reward model sees in training, and the
per-reward summary that training and evaluation rows carry."""

import numpy as np

from cogrpo.proto.config import RewardConfig
from cogrpo.rewards.interface import Reward
from cogrpo.rewards.registry import mask_unscored, reward_stats, score_in_batches


class ReadsIndex(Reward):
    """Scores image k (whose pixels all hold k) k * factor; valid only where the prompt is the image's own ("p<k>").
    Records the size of each call."""

    def __init__(self, factor: float):
        self.name, self.factor, self.calls = f"x{factor:g}", factor, []

    def score(self, images, prompts, metadata):
        self.calls.append(len(images))
        index = images[:, 0, 0, 0].astype(np.int64)
        own = np.array([p == f"p{k}" == m["prompt"] for k, p, m in zip(index, prompts, metadata, strict=True)])
        return index * self.factor, own


def test_score_in_batches_keeps_images_and_records_aligned_across_batches():
    images = np.repeat(np.arange(10, dtype=np.uint8), 2 * 2 * 3).reshape(10, 2, 2, 3)
    metadata = [{"prompt": f"p{k}"} for k in range(10)]
    rewards = [(ReadsIndex(1.0), 1.0), (ReadsIndex(2.0), 0.5)]
    terms = score_in_batches(rewards, images, metadata, batch_size=4)
    assert [reward.calls for reward, _ in rewards] == [[4, 4, 2], [4, 4, 2]]
    assert [w for _, _, w in terms] == [1.0, 0.5]
    for (scores, valid, _), factor in zip(terms, (1.0, 2.0)):
        np.testing.assert_array_equal(scores, np.arange(10) * factor)
        assert valid.all()  # every image met its own record


def test_reward_stats_average_the_scored_samples_only():
    scores = np.array([1.0, 3.0, np.nan, 100.0])
    terms = mask_unscored([(scores, np.array([True, True, True, False]), 1.0),
                           (np.full(4, np.nan), np.ones(4, bool), 0.5)])
    stats = reward_stats([RewardConfig(head="strict"), RewardConfig(head="partial")], terms)
    assert stats["reward/shapes_strict"] == 2.0 and stats["reward_std/shapes_strict"] == 1.0
    assert np.isnan(stats["reward/shapes_partial"]) and np.isnan(stats["reward_std/shapes_partial"])
