"""ImageReward (BLIP ViT-L image features read by a BERT text encoder through cross-attention, then an MLP head)
through its own package, from a local folder; nothing is downloaded.

The `image-reward` 1.5 package (the latest release) imports names that transformers removed in 4.56 and pulls in
diffusers, datasets, accelerate and OpenAI's clip at import. So it cannot live in the trainer's environment: reward
workers run it in a Ray runtime_env with `PIP_REQUIREMENTS` on top of that environment
(`cluster.reward_runtime_env: {pip: [...]}`, see the README). Its own loader always fetches bert-base-uncased's
tokenizer from the hub and loads weights with strict=False; here the tokenizer comes from the folder and the
weights load strictly, with no pickled code run.

The folder: ImageReward.pt (the released state dict), med_config.json (the released text-encoder config), and
tokenizer/ (bert-base-uncased's tokenizer files). Scores are the package's own: the MLP on the text encoder's [CLS]
state, standardised by the released mean and std; batched here, where the package scores one image per call.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cogrpo.data.weights import load_state_into, read_state_dict
from cogrpo.proto.errors import InputError
from cogrpo.rewards.interface import Reward, reward_device

# What a reward worker needs on top of the trainer's environment (verified with transformers 4.55.4 here).
PIP_REQUIREMENTS = ("image-reward==1.5", "transformers==4.55.4", "huggingface-hub<1", "tokenizers>=0.21,<0.22",
                    "timm==0.6.13", "fairscale==0.4.13", "openai-clip==1.0.1", "setuptools<81", "diffusers==0.39.0",
                    "datasets==4.0.0", "accelerate==1.15.0")
FILES = ("ImageReward.pt", "med_config.json", "tokenizer")
MAX_PROMPT_TOKENS = 35  # the package's


@contextmanager
def _local_tokenizer(folder: Path):
    """The package builds its tokenizer with a hard-coded hub id; for the duration of the build, it comes from
    `folder` instead, with the package's two extra special tokens."""
    from ImageReward.models.BLIP import blip_pretrain
    from transformers import BertTokenizer

    def init_tokenizer():
        tokenizer = BertTokenizer.from_pretrained(folder, local_files_only=True)
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
        return tokenizer

    original = blip_pretrain.init_tokenizer
    blip_pretrain.init_tokenizer = init_tokenizer
    try:
        yield
    finally:
        blip_pretrain.init_tokenizer = original


class ImageRewardScore(Reward):
    scores = "images"

    def __init__(self, path: str | Path, name: str = "image_reward"):
        root = Path(path)
        missing = [f for f in FILES if not (root / f).exists()]
        if missing:
            raise InputError(f"ImageReward folder {root} has no {missing[0]} (expected {', '.join(FILES)})")
        try:
            from ImageReward.ImageReward import ImageReward
        except ImportError as exc:
            raise InputError(f"ImageReward needs the image-reward package and its pins ({exc}): run reward workers "
                             "with cluster.reward_runtime_env (see the README)") from None
        self.device = reward_device()
        with _local_tokenizer(root / "tokenizer"):
            model = ImageReward(med_config=str(root / "med_config.json"), device=self.device)
        load_state_into(model, read_state_dict(root / "ImageReward.pt"), str(root / "ImageReward.pt"))
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.name = name

    @torch.no_grad()
    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        model, blip = self.model, self.model.blip
        pixels = torch.stack([model.preprocess(Image.fromarray(image)) for image in images]).to(self.device)
        text = blip.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS,
                              return_tensors="pt").to(self.device)
        image_embeds = blip.visual_encoder(pixels)
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        out = blip.text_encoder(text.input_ids, attention_mask=text.attention_mask, encoder_hidden_states=image_embeds,
                                encoder_attention_mask=image_mask, return_dict=True)
        rewards = (model.mlp(out.last_hidden_state[:, 0, :].float()).squeeze(-1) - model.mean) / model.std
        return rewards.double().cpu().numpy(), np.ones(len(images), dtype=bool)
