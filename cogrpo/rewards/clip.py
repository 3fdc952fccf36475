"""CLIPScore / PickScore-style rewards from a local transformers CLIP folder; nothing is downloaded.

score = exp(logit_scale) * cos(image embedding, text embedding): PickScore's definition with the PickScore_v1
weights, and torchmetrics' CLIPScore with an OpenAI CLIP folder (logit scale 100), minus its clamp at 0 (each term
is normalised within its group, where a clamp would only hide signal). The folder holds the model and its
processor, as `save_pretrained` of CLIPModel and CLIPProcessor write them; for PickScore that is PickScore_v1's
weights with the CLIP-ViT-H-14 processor files beside them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from cogrpo.proto.errors import InputError, first_line
from cogrpo.rewards.interface import Reward, reward_device


class ClipReward(Reward):
    scores = "images"

    def __init__(self, path: str | Path, name: str = "clip"):
        root = Path(path)
        if not root.is_dir():
            raise InputError(f"CLIP folder not found: {root}")
        self.device = reward_device()
        try:
            self.model = CLIPModel.from_pretrained(root, local_files_only=True).to(self.device).eval()
            self.model.requires_grad_(False)
            self.processor = CLIPProcessor.from_pretrained(root, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load CLIP from {root}: {first_line(exc)}") from None
        self.name = name

    @torch.no_grad()
    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        inputs = self.processor(text=prompts, images=[Image.fromarray(image) for image in images],
                                return_tensors="pt", padding=True, truncation=True).to(self.device)
        out = self.model(**inputs)
        scores = self.model.logit_scale.exp() * (out.image_embeds * out.text_embeds).sum(-1)
        return scores.double().cpu().numpy(), np.ones(len(images), dtype=bool)
