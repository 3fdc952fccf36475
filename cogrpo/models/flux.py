"""FLUX.1 (a rectified-flow MMDiT over 2x2-packed VAE latents, conditioned on T5 text states and a pooled CLIP-L
embedding) behind the flow family's model contract (cogrpo/models/diffusers_flow.py), from a local folder in the
FluxPipeline layout. Its packed latents (B, h/2 * w/2, 4 C) are already the flow sampler's (B, N, C).

FLUX.1-dev is guidance-distilled: its transformer reads the guidance scale as an input (`embedded_guidance`,
FluxPipeline's guidance_scale, 3.5 by default) and is sampled with one pass per step, so the sampler's guidance w
is 0; w > 0 is FluxPipeline's true CFG (true_cfg_scale = 1 + w, with the empty negative prompt). The pipeline's
default grid linspace(1, 1/N, N), exponentially shifted by mu, is ours with sampler.time_shift = exp(mu)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FluxPipeline

from cogrpo.models.diffusers_flow import DiffusersFlow, latent_side, load_pipeline


class FluxFlow(DiffusersFlow):
    kind = "flux"

    def __init__(self, pipe: FluxPipeline, resolution: int, embedded_guidance: float = 3.5):
        side = latent_side(resolution, pipe.vae_scale_factor, 2) // 2  # packed: 2x2 latents per position
        self.grid = (side, side)
        self.embedded_guidance = embedded_guidance if pipe.transformer.config.guidance_embeds else None
        rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        self.image_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
        super().__init__(pipe, (side * side, pipe.transformer.config.in_channels))

    def text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        states, pooled, _ = self.tools.encode_prompt(prompts, prompts, device=self.tools.vae.device,
                                                     max_sequence_length=self.text_length)
        return states, pooled

    def spatial(self, latents: torch.Tensor) -> torch.Tensor:
        """Unpack the 2x2 patches: (B, h/2 * w/2, 4 C) -> (B, C, h, w)."""
        b, _, channels = latents.shape
        side = self.grid[0]
        patches = latents.view(b, side, side, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return patches.reshape(b, channels // 4, 2 * side, 2 * side)

    def velocity(self, x, t, states, pooled):
        guidance = None if self.embedded_guidance is None else torch.full_like(t, self.embedded_guidance)
        device = x.device
        return self.transformer(hidden_states=x, timestep=t, guidance=guidance, pooled_projections=pooled,
                                encoder_hidden_states=states, txt_ids=torch.zeros(states.shape[1], 3, device=device),
                                img_ids=self.image_ids.to(device), return_dict=False)[0]


def load_flux(path: str | Path, resolution: int, embedded_guidance: float = 3.5) -> FluxFlow:
    return FluxFlow(load_pipeline(FluxPipeline, path, "FLUX"), resolution, embedded_guidance)
