"""TinyFlow: a ~1.2M-parameter rectified-flow transformer over continuous shapes-world images, trainable on a CPU.

An image is 64 continuous 2x2-patch vectors (16x16x3 pixels scaled to [-1, 1], no VAE). The model predicts the
velocity v = eps - x_0 at time t (x_t = (1 - t) x_0 + t eps). Prompt words are a prefix as in TinyMDM; the time
enters through a sinusoidal embedding added to the residual stream before every block; the same residual conv stem
gives the local bias a CPU-sized budget needs. The head starts at zero, so the untrained model predicts v = 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from cogrpo.data.prompts import MAX_WORDS, VOCAB
from cogrpo.data.world import H, W, to_palette, to_rgb
from cogrpo.models.interface import WordPrompts
from cogrpo.models.tiny_mdm import Block, conv_stem
from cogrpo.proto.config import TinyArch

PATCH = 2
GRID = (H // PATCH, W // PATCH)
PATCH_DIM = PATCH * PATCH * 3


def patchify(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) -> (B, N, PATCH_DIM), patches in raster order."""
    b = images.shape[0]
    gh, gw = GRID
    return images.reshape(b, gh, PATCH, gw, PATCH, 3).permute(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, PATCH_DIM)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    b = latents.shape[0]
    gh, gw = GRID
    return latents.reshape(b, gh, gw, PATCH, PATCH, 3).permute(0, 1, 3, 2, 4, 5).reshape(b, H, W, 3)


def images_to_latents(images: np.ndarray) -> torch.Tensor:
    """uint8 RGB (B, H, W, 3) -> latents (B, N, PATCH_DIM) in [-1, 1]."""
    return patchify(torch.from_numpy(images).float() / 127.5 - 1)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, dim) sinusoids over frequencies 1 to 1000."""
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), dim // 2, device=t.device))
    angles = t.float()[:, None] * freqs[None] * 2 * math.pi
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TinyFlow(WordPrompts, nn.Module):
    kind = "tiny_flow"
    latent_shape = (GRID[0] * GRID[1], PATCH_DIM)

    def __init__(self, arch: TinyArch = TinyArch()):
        super().__init__()
        self.arch = arch
        d = arch.d_model
        self.word_emb = nn.Embedding(len(VOCAB), d)
        self.patch_in = nn.Linear(PATCH_DIM, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.time_in = nn.ModuleList(nn.Linear(d, d) for _ in range(arch.layers))
        self.pos = nn.Parameter(torch.randn(1, MAX_WORDS + self.num_tokens, d) * 0.02)
        self.convs = nn.ModuleList(nn.Conv2d(d, d, 3, padding=1) for _ in range(arch.conv_layers))
        self.blocks = nn.ModuleList(Block(d, arch.heads, arch.ff_mult) for _ in range(arch.layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, PATCH_DIM)
        nn.init.normal_(self.word_emb.weight, std=0.02)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def num_tokens(self) -> int:
        return GRID[0] * GRID[1]

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, N, PATCH_DIM), t (B,), cond (B, MAX_WORDS) -> velocity (B, N, PATCH_DIM)."""
        h = conv_stem(self.convs, self.patch_in(x), GRID)
        h = torch.cat([self.word_emb(cond), h], dim=1) + self.pos
        time = self.time_mlp(timestep_embedding(t, self.arch.d_model))
        for block, time_in in zip(self.blocks, self.time_in):
            h = block(h + time_in(time)[:, None])
        return self.head(self.ln_f(h[:, MAX_WORDS:]))

    def decode_images(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> uint8 RGB, every pixel snapped to the nearest palette colour (what the shapes judge reads)."""
        pixels = ((unpatchify(latents.float().cpu()) + 1) * 127.5).round().clamp(0, 255).numpy()
        return to_rgb(to_palette(pixels))
