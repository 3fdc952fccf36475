"""TinyMDLM: a few-million-parameter masked diffusion language model over the reasoning world's characters,
trainable on a CPU in minutes.

The prompt (left-padded, so it ends where the completion starts) and the completion (a fixed number of positions,
EOS-filled after the answer) form one sequence under full bidirectional attention, as in LLaDA; logits are read at
the completion's positions. Attention sees relative positions too (rotary embeddings): a digit's column is an
offset from the operator, whatever the operands' lengths. Prompt and
completion share one token embedding, mask token included, so a prompt can be masked too (the unconditional prompt
of guidance is all masks, as LLaDA's; d1's estimator masks part of it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cogrpo.data.reasoning import ALPHABET, MAX_COMPLETION, MAX_PROMPT
from cogrpo.models.interface import MaskedTokenModel
from cogrpo.models.tiny_mdm import Block, rotary_angles
from cogrpo.proto.config import TinyArch
from cogrpo.proto.errors import InputError, clip

PAD, EOS = 0, 1  # prompt padding, completion filler
CHARS = ALPHABET
COMPLETION = MAX_COMPLETION  # completion positions: the longest reference completion fits


def encode_text(text: str) -> list[int]:
    unknown = [ch for ch in text if ch not in CHARS]
    if unknown:
        raise InputError(f"character {unknown[0]!r} in prompt {clip(text)!r} is not in TinyMDLM's alphabet "
                         f"({CHARS})")
    return [2 + CHARS.index(ch) for ch in text]


def decode_text(ids: list[int]) -> str:
    """Characters up to the first EOS (or padding)."""
    out = []
    for i in ids:
        if i < 2 or i >= 2 + len(CHARS):
            break
        out.append(CHARS[i - 2])
    return "".join(out)


class TinyMDLM(MaskedTokenModel):
    kind = "tiny_mdlm"

    def __init__(self, arch: TinyArch = TinyArch()):
        super().__init__()
        self.arch = arch
        d = arch.d_model
        self.token_emb = nn.Embedding(self.codebook_size + 1, d)  # + the mask token
        self.pos = nn.Parameter(torch.randn(1, MAX_PROMPT + COMPLETION, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, arch.heads, arch.ff_mult) for _ in range(arch.layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.codebook_size)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.register_buffer("rotary", torch.stack(rotary_angles(MAX_PROMPT + COMPLETION, d // arch.heads)),
                             persistent=False)

    @property
    def codebook_size(self) -> int:
        return 2 + len(CHARS)

    @property
    def num_tokens(self) -> int:
        return COMPLETION

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            if not prompt or len(prompt) > MAX_PROMPT:
                raise InputError(f"a TinyMDLM prompt has 1 to {MAX_PROMPT} characters: {clip(prompt)!r}")
            ids = encode_text(prompt)
            rows.append([PAD] * (MAX_PROMPT - len(ids)) + ids)
        return torch.tensor(rows, dtype=torch.long)

    def encode_completions(self, completions: list[str]) -> torch.Tensor:
        """Supervised completions, EOS-filled to the completion length."""
        rows = []
        for text in completions:
            ids = encode_text(text)
            if len(ids) > COMPLETION:
                raise InputError(f"a completion has at most {COMPLETION} characters: {clip(text)!r}")
            rows.append(ids + [EOS] * (COMPLETION - len(ids)))
        return torch.tensor(rows, dtype=torch.long)

    def null_conditioning(self, batch: int) -> torch.Tensor:
        return torch.full((batch, MAX_PROMPT), self.mask_id, dtype=torch.long)

    @property
    def prompt_feature_dim(self) -> int:
        return self.token_emb.embedding_dim

    @torch.no_grad()
    def prompt_features(self, cond: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """The mean embedding of the prompt's characters (padding excluded): (B, D)."""
        table = self.token_emb.weight if table is None else table
        chars = (cond != PAD).float()
        return (F.embedding(cond, table) * chars[..., None]).sum(1) / chars.sum(1, keepdim=True).clamp(min=1)

    def prompt_table(self) -> torch.Tensor:
        return self.token_emb.weight.detach().cpu().clone()

    def token_table(self) -> torch.Tensor:
        return self.token_emb.weight.detach().cpu().clone()

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        n = cond.shape[1] + tokens.shape[1]
        h = self.token_emb(torch.cat([cond, tokens], 1)) + self.pos[:, :n]
        rotary = (self.rotary[0, :n], self.rotary[1, :n])
        for block in self.blocks:
            h = block(h, rotary)
        return self.head(self.ln_f(h[:, cond.shape[1]:]))

    def decode_texts(self, tokens: torch.Tensor) -> list[str]:
        return [decode_text(row) for row in tokens.tolist()]
