"""The simulated reward (`simulate:` in the config): a wait per image and scores drawn so that groups behave as in
training: each prompt has its own mean, its samples spread around it, and some prompts' groups score alike (no
variance, no advantage). Scores are functions of the prompt, the sample and the reward term, so a retried call
scores the same."""

from __future__ import annotations

import time
import zlib

import numpy as np

from cogrpo.proto.config import SimulateConfig
from cogrpo.rewards.interface import Reward


class SimulatedReward(Reward):
    """Stands in for one configured reward term (its name and weight are kept)."""

    scores = "images"  # or texts: it scores whatever the simulated family makes

    def __init__(self, cost: SimulateConfig, name: str):
        self.cost, self.name = cost, name

    def _draw(self, *keys) -> np.random.Generator:
        return np.random.default_rng([zlib.crc32(self.name.encode()), *(zlib.crc32(k) for k in keys)])

    def score(self, samples, prompts: list[str], metadata: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        cost = self.cost
        seconds = len(prompts) * cost.reward_s_per_image / cost.gpus_per_reward_worker
        if seconds > 0:
            time.sleep(seconds)
        scores = np.empty(len(prompts))
        for k, (sample, prompt) in enumerate(zip(samples, prompts)):
            group = self._draw(prompt.encode())
            mean, flat = 0.5 + cost.prompt_spread * group.standard_normal(), group.random() < cost.zero_variance
            own = self._draw(prompt.encode(), np.asarray(sample).tobytes() if not isinstance(sample, str)
                             else sample.encode())
            scores[k] = round(mean) if flat else mean + cost.noise * own.standard_normal()
        return scores, np.ones(len(prompts), dtype=bool)
