"""The CLIP-family reward end to end on a tiny random-weight CLIP saved the way transformers saves a real one."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from cogrpo.proto.config import RewardConfig, resolve_config
from cogrpo.proto.errors import InputError
from cogrpo.rewards.clip import ClipReward
from cogrpo.rewards.registry import build_reward

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def folder(tiny_clip_folder):
    return tiny_clip_folder


@pytest.fixture(scope="module")
def reward(folder):
    return build_reward(RewardConfig(kind="clip", path=str(folder)))


def test_scores_real_images_finite_deterministic_and_batch_order_invariant(reward, folder, scenes):
    images, prompts = scenes
    assert isinstance(reward, ClipReward) and reward.name == f"clip_{folder.name}"
    scores, valid = reward.score(images, prompts, [{}] * len(prompts))
    assert scores.shape == (6,) and scores.dtype == np.float64 and np.isfinite(scores).all() and valid.all()
    assert np.array_equal(reward.score(images, prompts, [{}] * 6)[0], scores)
    order = np.array([3, 0, 5, 1, 4, 2])
    shuffled, _ = reward.score(images[order], [prompts[i] for i in order], [{}] * 6)
    np.testing.assert_allclose(shuffled, scores[order], rtol=1e-5, atol=1e-6)
    assert np.ptp(scores) > 0


def test_score_is_the_models_own_image_text_logit(reward, folder, scenes):
    """exp(logit_scale) * cosine: the diagonal of CLIP's own logits_per_image for the matched pairs."""
    images, prompts = scenes
    model, processor = CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder)
    inputs = processor(text=prompts, images=[Image.fromarray(i) for i in images], return_tensors="pt",
                       padding=True, truncation=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    np.testing.assert_allclose(reward.score(images, prompts, [{}] * 6)[0], logits.diagonal().numpy(), rtol=1e-5)


def test_missing_or_foreign_folders_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="CLIP folder not found"):
        ClipReward(tmp_path / "missing")
    with pytest.raises(InputError, match="cannot load CLIP"):
        ClipReward(tmp_path)
    with pytest.raises(InputError, match="needs path"):
        resolve_config({"rewards": [{"kind": "clip"}]})
