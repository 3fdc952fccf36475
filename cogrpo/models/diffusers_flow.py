"""What the diffusers rectified-flow backbones (SD3, FLUX.1) share behind the flow family's model contract: a
pipeline loaded from a local folder (nothing is downloaded), the transformer as the only registered submodule (the
policy the learner trains and the weight channel ships), the text encoders and the VAE as frozen tools outside the
module tree that `to()` moves with it, conditioning packed as one flat float vector per prompt
[text states (L x D) | pooled text embedding (P)] from the pipeline's own encode_prompt, and images decoded by its
VAE as its PIL output. Subclasses say how prompts are encoded, how the flow sampler's (B, N, C) latents map to the
VAE's (B, C, h, w), and how their transformer is called.

Conventions shared with both pipelines: our t in [0, 1] is the scheduler's sigma; the sampler's guidance w in
cond + w (cond - uncond) is the pipeline's (true) CFG scale - 1; our time grid shift(linspace(1, 0, N + 1)) is the
pipeline's when it is given `sigmas=linspace(1, 0, N + 1)[:-1]` and its scheduler's shift (FLUX: exp(mu)) equals
sampler.time_shift.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from torch import nn

from cogrpo.models.interface import OnDevice
from cogrpo.proto.errors import InputError, first_line

TEXT_LENGTH = 77  # T5 tokens per prompt (the pipelines' defaults are 256 and 512; GenEval prompts need far fewer)


def pack(states: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Text states (B, L, D) and pooled embeddings (B, P) as one flat float32 CPU vector per prompt."""
    return torch.cat([states.flatten(1), pooled], dim=1).float().cpu()


class DiffusersFlow(OnDevice, nn.Module):
    kind: str

    def __init__(self, pipe: DiffusionPipeline, latent_shape: tuple[int, int], text_length: int = TEXT_LENGTH):
        super().__init__()
        self.transformer = pipe.transformer
        self.tools = pipe  # not a Module: its text encoders and VAE stay out of parameters() and state_dict()
        pipe.set_progress_bar_config(disable=True)
        self.latent_shape = latent_shape
        self.text_length = text_length
        with torch.no_grad():
            states, pooled = self.text([""])
        self.text_shape, self.pooled_size = tuple(states.shape[1:]), pooled.shape[1]
        self._null = pack(states, pooled)

    @abstractmethod
    def text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(text states (B, L, D), pooled embedding (B, P)) from the pipeline's text encoders."""

    @abstractmethod
    def spatial(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> the VAE's (B, C, h, w)."""

    @abstractmethod
    def velocity(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The transformer's velocity, in the shape of x, inputs in its dtype."""

    def to(self, *args, **kwargs) -> DiffusersFlow:
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
            tool = getattr(self.tools, name, None)
            if tool is not None:
                tool.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return pack(*self.text(prompts))

    def unpack(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A packed conditioning -> (text states (B, L, D), pooled embedding (B, P))."""
        length, width = self.text_shape
        states, pooled = cond.split([length * width, self.pooled_size], dim=1)
        return states.view(-1, length, width), pooled

    def null_conditioning(self, batch: int) -> torch.Tensor:
        """The empty prompt, as the pipelines' unconditional branch."""
        return self._null.expand(batch, -1)

    @property
    def prompt_feature_dim(self) -> int:
        return self.pooled_size

    def prompt_features(self, cond: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled text embedding, copied out of `cond` (a view would carry all of cond when pickled)."""
        return self.unpack(cond)[1].detach().clone()

    def prompt_table(self) -> None:
        """The prompt features read frozen text encoders: there is nothing trained to copy."""
        return None

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Inputs are cast to the transformer's dtype (bf16 under DeepSpeed on GPUs); the velocity comes back in
        float32, so log-probs are computed in full precision whatever the transformer runs in."""
        dtype = self.transformer.dtype
        states, pooled = (part.to(dtype) for part in self.unpack(cond))
        return self.velocity(x.to(dtype), t.to(dtype), states, pooled).float()

    @torch.no_grad()
    def decode_images(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> uint8 RGB through the VAE, as the pipeline's PIL output."""
        vae = self.tools.vae
        scaled = self.spatial(latents.to(vae.device, vae.dtype)) / vae.config.scaling_factor + vae.config.shift_factor
        pixels = self.tools.image_processor.postprocess(vae.decode(scaled, return_dict=False)[0], output_type="np")
        return (pixels * 255).round().astype(np.uint8)


def load_pipeline(cls: type[DiffusionPipeline], path: str | Path, name: str) -> DiffusionPipeline:
    """A pipeline from its local folder (the layout `save_pretrained` writes), as one clear line when it is not."""
    root = Path(path)
    if not (root / "model_index.json").is_file():
        raise InputError(f"{name} folder {root} has no model_index.json (expected the diffusers pipeline layout)")
    try:
        return cls.from_pretrained(root, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot load {name} from {root}: {first_line(exc)}") from None


def latent_side(resolution: int, scale: int, multiple: int) -> int:
    """Latents per side of a `resolution`-pixel image, which must be a multiple of `multiple` latents."""
    if resolution % (scale * multiple):
        raise InputError(f"resolution {resolution} is not a multiple of {scale * multiple} (the VAE's {scale} "
                         f"pixels per latent times {multiple}-latent patches)")
    return resolution // scale
