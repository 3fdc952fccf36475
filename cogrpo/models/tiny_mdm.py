"""TinyMDM: a ~1M-parameter masked diffusion model over 8x8 patch tokens, trainable on a CPU in minutes.

Prompt words are a prefix; a small residual conv stem over the token grid gives the local inductive bias that a
CPU-sized budget needs to learn anything spatial; then pre-LN transformer blocks with full attention.
Embeddings start at std 0.02 so they do not drown the positional signal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cogrpo.data.prompts import MAX_WORDS, VOCAB
from cogrpo.models.interface import MaskedTokenModel, WordPrompts
from cogrpo.models.patch_tokenizer import PatchTokenizer
from cogrpo.proto.config import TinyArch


def rotary_angles(positions: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (positions, head_dim / 2) of rotary position embeddings (RoFormer)."""
    freqs = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(positions, dtype=torch.float32)[:, None] * freqs[None, :]
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, N, Dh) queries or keys by their positions' angles, pairs (first half, second half)."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class Block(nn.Module):
    def __init__(self, d: int, heads: int, ff_mult: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff_mult * d), nn.GELU(), nn.Linear(ff_mult * d, d))

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """rotary: (cos, sin) of rotary_angles, to attend by relative position too (TinyMDLM's digits)."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        attn = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.ff(self.ln2(x))


def conv_stem(convs: nn.ModuleList, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The residual conv stem over a (B, gh * gw, D) grid of patch embeddings (the tiny models' local bias)."""
    if not convs:
        return x
    b, (gh, gw) = x.shape[0], grid
    g = x.transpose(1, 2).reshape(b, -1, gh, gw)
    for conv in convs:
        g = g + F.gelu(conv(g))
    return g.reshape(b, -1, gh * gw).transpose(1, 2)


class TinyMDM(WordPrompts, MaskedTokenModel):
    kind = "tiny_mdm"

    def __init__(self, arch: TinyArch = TinyArch()):
        super().__init__()
        self.arch = arch
        self.tokenizer = PatchTokenizer()
        d = arch.d_model
        self.word_emb = nn.Embedding(len(VOCAB), d)
        self.token_emb = nn.Embedding(self.codebook_size + 1, d)  # + the mask token
        self.pos = nn.Parameter(torch.randn(1, MAX_WORDS + self.num_tokens, d) * 0.02)
        self.convs = nn.ModuleList(nn.Conv2d(d, d, 3, padding=1) for _ in range(arch.conv_layers))
        self.blocks = nn.ModuleList(Block(d, arch.heads, arch.ff_mult) for _ in range(arch.layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.codebook_size)
        nn.init.normal_(self.word_emb.weight, std=0.02)
        nn.init.normal_(self.token_emb.weight, std=0.02)

    def token_table(self) -> torch.Tensor:
        return self.token_emb.weight.detach().cpu().clone()

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = conv_stem(self.convs, self.token_emb(tokens), self.grid)
        h = torch.cat([self.word_emb(cond), x], dim=1) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h[:, MAX_WORDS:]))
