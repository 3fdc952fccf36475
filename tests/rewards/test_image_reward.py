"""ImageReward through the real `image-reward` package, in the environment a reward worker gets: the package and
its pins (`PIP_REQUIREMENTS`, with transformers 4.55) installed from the registry into a folder that goes first on
PYTHONPATH, over this venv, as Ray's pip runtime_env layers them. A subprocess builds a tiny ImageReward (the
package's own class: BLIP ViT-L image encoder, a one-layer BERT with cross-attention, its MLP head; random weights),
saves it as the released files are laid out, then scores through our loader and through the package's `score`."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cogrpo.proto.config import RewardConfig
from cogrpo.proto.errors import InputError
from cogrpo.rewards.image_reward import PIP_REQUIREMENTS, ImageRewardScore

# What Ray's runtime_env would take from this venv but `pip install --target` cannot see: the package's
# dependencies that the trainer's environment lacks.
MISSING_HERE = ("pandas", "pyarrow", "dill", "multiprocess", "xxhash", "httpx", "httpcore")
WORDS = ["a", "an", "photo", "of", "red", "green", "blue", "yellow", "purple", "black", "circle", "square",
         "triangle", "and", "two", "three", "four", "left", "right", "above", "below", "circles", "squares"]


@pytest.fixture(scope="module")
def overlay():
    """The reward worker's extra packages, installed once per requirement list into a cache folder."""
    pins = PIP_REQUIREMENTS + MISSING_HERE
    key = hashlib.sha256("\n".join(pins).encode()).hexdigest()[:12]
    target = Path.home() / ".cache" / "cogrpo" / f"image-reward-{key}"
    if not target.is_dir():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                                 str(partial), *pins], capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"image-reward and its pins cannot be installed from the registry: {last}")
        partial.rename(target)
    return target


def make_and_score(folder: str) -> None:
    """Runs inside the overlay: writes the tiny model's files, prints both scorers' results as JSON."""
    import torch
    from ImageReward.ImageReward import ImageReward
    from PIL import Image
    from transformers import BertTokenizer

    from cogrpo.rewards.image_reward import _local_tokenizer
    from cogrpo.rewards.registry import build_reward
    from tests.rewards.conftest import shapes_scenes

    torch.set_num_threads(2)
    root = Path(folder)
    (root / "tokenizer").mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(root / "vocab.txt")).save_pretrained(root / "tokenizer")
    med_config = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": len(vocab) + 2,
                  "hidden_size": 768, "num_hidden_layers": 1, "num_attention_heads": 12, "intermediate_size": 64,
                  "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                  "max_position_embeddings": 40, "type_vocab_size": 2, "initializer_range": 0.02,
                  "layer_norm_eps": 1e-12, "pad_token_id": 0, "add_cross_attention": True, "encoder_width": 1024}
    (root / "med_config.json").write_text(json.dumps(med_config))
    torch.manual_seed(0)
    with _local_tokenizer(root / "tokenizer"):
        model = ImageReward(med_config=str(root / "med_config.json"), device="cpu").eval()
    for param in model.mlp.parameters():  # the package's head init scores every input ~0; spread it out
        torch.nn.init.normal_(param, std=0.3)
    torch.save(model.state_dict(), root / "ImageReward.pt")
    images, prompts = shapes_scenes(3)
    reward = build_reward(RewardConfig(kind="image_reward", path=folder))
    ours, valid = reward.score(images, prompts, [{}] * len(prompts))
    with torch.no_grad():
        theirs = [model.score(p, Image.fromarray(i)) for i, p in zip(images, prompts)]
    print(json.dumps({"ours": ours.tolist(), "valid": valid.tolist(), "theirs": theirs, "name": reward.name}))


def test_scores_match_the_packages_own_in_the_reward_workers_environment(overlay, tmp_path):
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(overlay), str(repo)])}
    code = f"from tests.rewards.test_image_reward import make_and_score; make_and_score({str(tmp_path / 'ir')!r})"
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, env=env,
                            timeout=900, cwd=repo)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["name"] == "image_reward_ir" and all(out["valid"]) and len(out["ours"]) == 3
    np.testing.assert_allclose(out["ours"], out["theirs"], rtol=1e-4, atol=1e-5)
    assert np.ptp(out["ours"]) > 0


def test_missing_files_and_package_are_one_clear_line(tmp_path):
    with pytest.raises(InputError, match="has no ImageReward.pt"):
        ImageRewardScore(tmp_path)
    for name in ("ImageReward.pt", "med_config.json"):
        (tmp_path / name).write_text("")
    (tmp_path / "tokenizer").mkdir()
    try:
        import ImageReward  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="reward_runtime_env") as info:
            ImageRewardScore(tmp_path)
        assert "\n" not in str(info.value)
