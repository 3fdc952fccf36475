"""The HPS reward end to end: a tiny open_clip architecture registered from a config file (tests/conftest.py),
random weights saved as an HPS-style checkpoint ({"state_dict": ...} in a torch file, or safetensors), loaded by
our code."""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cogrpo.proto.config import RewardConfig
from cogrpo.proto.errors import InputError
from cogrpo.rewards.hps import HpsReward
from cogrpo.rewards.registry import build_reward

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained(tiny_hps):
    """(the model as HPS training left it, its checkpoint file)."""
    return tiny_hps[1:]


@pytest.fixture(scope="module")
def arch(tiny_hps):
    return tiny_hps[0]


@pytest.fixture(scope="module")
def reward(trained, arch):
    return build_reward(RewardConfig(kind="hps", path=str(trained[1]), arch=arch))


def test_scores_real_images_finite_deterministic_and_batch_order_invariant(reward, scenes):
    images, prompts = scenes
    assert isinstance(reward, HpsReward) and reward.name == "hps_HPS_tiny"
    scores, valid = reward.score(images, prompts, [{}] * 6)
    assert scores.shape == (6,) and scores.dtype == np.float64 and np.isfinite(scores).all() and valid.all()
    assert np.abs(scores).max() <= 1 + 1e-6  # cosines, as hpsv2 reports them
    assert np.array_equal(reward.score(images, prompts, [{}] * 6)[0], scores)
    order = np.array([3, 0, 5, 1, 4, 2])
    shuffled, _ = reward.score(images[order], [prompts[i] for i in order], [{}] * 6)
    np.testing.assert_allclose(shuffled, scores[order], rtol=1e-5, atol=1e-6)
    assert np.ptp(scores) > 0


def test_score_is_the_checkpoints_cosine(reward, trained, arch, scenes, tmp_path):
    model, _ = trained
    images, prompts = scenes
    _, _, preprocess = open_clip.create_model_and_transforms(arch, image_resize_mode="longest")
    pixels = torch.stack([preprocess(Image.fromarray(i)) for i in images])
    with torch.no_grad():
        image_features, text_features, _ = model(pixels, open_clip.get_tokenizer(arch)(prompts))
    expected = (image_features * text_features).sum(-1).numpy()
    np.testing.assert_allclose(reward.score(images, prompts, [{}] * 6)[0], expected, rtol=1e-5, atol=1e-6)
    torch.manual_seed(1)  # other weights in the file give other scores: the reward reads them from it
    torch.save({"state_dict": open_clip.create_model(arch).state_dict()}, tmp_path / "other.pt")
    assert not np.allclose(HpsReward(tmp_path / "other.pt", arch).score(images, prompts, [{}] * 6)[0], expected,
                           atol=1e-3)


def test_safetensors_checkpoints_load_too(trained, arch, scenes, tmp_path):
    model, checkpoint = trained
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "hps.safetensors")
    images, prompts = scenes
    from_torch = HpsReward(checkpoint, arch).score(images, prompts, [{}] * 6)[0]
    assert np.array_equal(HpsReward(tmp_path / "hps.safetensors", arch).score(images, prompts, [{}] * 6)[0],
                          from_torch)


def test_bad_checkpoints_and_architectures_are_input_errors(trained, arch, tmp_path):
    _, checkpoint = trained
    assert "ViT-H-14" in open_clip.list_models()  # the default architecture resolves without any download
    with pytest.raises(InputError, match="not found"):
        HpsReward(tmp_path / "missing.pt", arch)
    with pytest.raises(InputError, match="unknown open_clip architecture"):
        HpsReward(checkpoint, "no-such-arch")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="not a readable torch file"):
        HpsReward(tmp_path / "junk.pt", arch)
    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="does not fit the model"):
        HpsReward(tmp_path / "foreign.pt", arch)
