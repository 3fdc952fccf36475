"""Stable Diffusion 3 (an MMDiT rectified-flow transformer over VAE latents, conditioned on CLIP-L, CLIP-G and T5
text) behind the flow family's model contract (cogrpo/models/diffusers_flow.py), from a local folder in the
StableDiffusion3Pipeline layout. Latents are the VAE's (B, C, h, w) as (B, h * w, C); the transformer reads
timestep 1000 t. The pipeline's default time grid ends at 1/1000 before 0; given `sigmas`, it runs ours."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusion3Pipeline

from cogrpo.models.diffusers_flow import DiffusersFlow, latent_side, load_pipeline


class SD3Flow(DiffusersFlow):
    kind = "sd3"

    def __init__(self, pipe: StableDiffusion3Pipeline, resolution: int | None = None):
        config, scale = pipe.transformer.config, pipe.vae_scale_factor
        side = latent_side(resolution or config.sample_size * scale, scale, config.patch_size)
        self.grid = (side, side)
        super().__init__(pipe, (side * side, config.in_channels))

    def text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        states, _, pooled, _ = self.tools.encode_prompt(prompts, prompts, prompts, device=self.tools.vae.device,
                                                        do_classifier_free_guidance=False,
                                                        max_sequence_length=self.text_length)
        return states, pooled

    def spatial(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.view(-1, *self.grid, latents.shape[-1]).permute(0, 3, 1, 2)

    def velocity(self, x, t, states, pooled):
        v = self.transformer(hidden_states=self.spatial(x), timestep=t * 1000, encoder_hidden_states=states,
                             pooled_projections=pooled, return_dict=False)[0]
        return v.permute(0, 2, 3, 1).reshape(x.shape)


def load_sd3(path: str | Path, resolution: int | None = None) -> SD3Flow:
    return SD3Flow(load_pipeline(StableDiffusion3Pipeline, path, "SD3"), resolution)
