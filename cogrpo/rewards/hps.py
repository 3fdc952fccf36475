"""HPSv2 / HPSv2.1 (human preference score) through open_clip, from a local checkpoint; nothing is downloaded.

The hpsv2 package always fetches the LAION ViT-H-14 weights before overwriting every one of them with the HPS
checkpoint, and its wheel misses its BPE vocabulary; so this builds the bare architecture with open_clip (no
pretrained weights) and loads the checkpoint's state dict into it. v2 and v2.1 share the architecture and differ
only in the file. Scoring follows hpsv2's: images resized on their longest side and padded to a square, then the
cosine between the normalised image and text embeddings (no logit scale).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from cogrpo.models.checkpoint import load_state_into, load_tensors
from cogrpo.proto.errors import InputError
from cogrpo.rewards.interface import Reward


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The released torch file holds {"state_dict": ...}: read with weights_only, so no pickled code runs. A
    safetensors file holds the state dict itself."""
    if path.suffix == ".safetensors":
        return load_tensors(path)[0]
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise InputError(f"HPS checkpoint {path} is not a readable torch file ({str(exc).splitlines()[0]})") from None
    if not isinstance(payload, dict):
        raise InputError(f"HPS checkpoint {path} holds a {type(payload).__name__}, not a state dict")
    return payload.get("state_dict", payload)


class HpsReward(Reward):
    def __init__(self, checkpoint: str | Path, arch: str = "ViT-H-14", name: str = "hps"):
        path = Path(checkpoint)
        if not path.is_file():
            raise InputError(f"HPS checkpoint not found: {path}")
        if arch not in open_clip.list_models():
            raise InputError(f"unknown open_clip architecture {arch!r}")
        model, _, self.preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=None, pretrained_text=False, image_resize_mode="longest")
        load_state_into(model, read_state_dict(path), str(path))
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.name = name

    @torch.no_grad()
    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        pixels = torch.stack([self.preprocess(Image.fromarray(image)) for image in images])
        image_features = self.model.encode_image(pixels, normalize=True)
        text_features = self.model.encode_text(self.tokenizer(prompts), normalize=True)
        return (image_features * text_features).sum(-1).double().numpy(), np.ones(len(images), dtype=bool)
