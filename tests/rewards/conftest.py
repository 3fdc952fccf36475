import random

import numpy as np
import pytest

from cogrpo.data.prompts import TASKS, sample_records
from cogrpo.data.world import render, to_rgb


def shapes_scenes(n: int) -> tuple[np.ndarray, list[str]]:
    """Real images with their prompts: shapes-world renders (16x16 RGB), one per GenEval-style record."""
    rng = random.Random(0)
    records = sample_records(rng, n, tasks=TASKS)
    return to_rgb(np.stack([render(r, rng) for r in records])), [r["prompt"] for r in records]


@pytest.fixture(scope="module")
def scenes():
    return shapes_scenes(6)
