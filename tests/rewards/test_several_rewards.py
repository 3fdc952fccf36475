"""Several model rewards at once: a config naming two builds both, each scores the batch, and the group advantage
is the weighted sum of the terms normalised one by one."""

import numpy as np
import pytest

from cogrpo.learner.advantages import group_advantages, group_normalize
from cogrpo.proto.config import resolve_config
from cogrpo.rewards.clip import ClipReward
from cogrpo.rewards.hps import HpsReward
from cogrpo.rewards.registry import build_reward, score_all

pytestmark = pytest.mark.usefixtures("single_thread")


def test_two_model_rewards_build_score_and_combine(tiny_clip_folder, tiny_hps, scenes):
    arch, _, checkpoint = tiny_hps
    config = resolve_config({"rewards": [{"kind": "hps", "path": str(checkpoint), "arch": arch, "weight": 1.0},
                                         {"kind": "clip", "path": str(tiny_clip_folder), "weight": 0.5}]})
    rewards = [(build_reward(r), r.weight) for r in config.rewards]
    assert [type(r) for r, _ in rewards] == [HpsReward, ClipReward]
    names = [c.name for c in config.rewards]
    assert [r.name for r, _ in rewards] == names and len(set(names)) == 2
    images, prompts = scenes
    terms = score_all(rewards, images, prompts, [{}] * len(prompts))
    assert [w for _, _, w in terms] == [1.0, 0.5]
    for scores, valid, _ in terms:
        assert scores.shape == (6,) and np.isfinite(scores).all() and valid.all() and np.ptp(scores) > 0
    assert not np.allclose(terms[0][0], terms[1][0])  # two models, two opinions
    groups = np.repeat([0, 1], 3)
    adv, usable = group_advantages(terms, groups, eps=1e-4)
    expected = sum(w * group_normalize(s, groups, v, 1e-4) for s, v, w in terms)
    assert usable.all() and np.allclose(adv, expected)
