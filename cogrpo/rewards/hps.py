"""HPSv2 / HPSv2.1 (human preference score) through open_clip, from a local checkpoint; nothing is downloaded.

The hpsv2 package always fetches the LAION ViT-H-14 weights before overwriting every one of them with the HPS
checkpoint, and its wheel misses its BPE vocabulary; so this builds the bare architecture with open_clip (no
pretrained weights) and loads the checkpoint's state dict into it. v2 and v2.1 share the architecture and differ
only in the file. Scoring follows hpsv2's: images resized on their longest side and padded to a square, then the
cosine between the normalised image and text embeddings (no logit scale).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from cogrpo.data.weights import load_state_into, read_state_dict
from cogrpo.proto.errors import InputError
from cogrpo.rewards.interface import Reward, reward_device


class HpsReward(Reward):
    scores = "images"

    def __init__(self, checkpoint: str | Path, arch: str = "ViT-H-14", name: str = "hps"):
        path = Path(checkpoint)
        if not path.is_file():
            raise InputError(f"HPS checkpoint not found: {path}")
        if arch not in open_clip.list_models():
            raise InputError(f"unknown open_clip architecture {arch!r}")
        model, _, self.preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=None, pretrained_text=False, image_resize_mode="longest")
        load_state_into(model, read_state_dict(path), str(path))
        self.device = reward_device()
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.name = name

    @torch.no_grad()
    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        pixels = torch.stack([self.preprocess(Image.fromarray(image)) for image in images]).to(self.device)
        image_features = self.model.encode_image(pixels, normalize=True)
        text_features = self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=True)
        scores = (image_features * text_features).sum(-1)
        return scores.double().cpu().numpy(), np.ones(len(images), dtype=bool)
