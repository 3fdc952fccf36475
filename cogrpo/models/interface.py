"""The masked-token model contract the samplers and learners rely on."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cogrpo.data.prompts import PAD, WORD_ID, null_tokens, tokenize


class ImageTokenizer(ABC):
    """Images <-> token grids. The 2x2-patch codebook and a learned VQ model both sit behind this."""

    codebook_size: int
    grid: tuple[int, int]

    @abstractmethod
    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB (B, H, W, 3) -> int64 tokens (B, grid_h * grid_w)."""

    @abstractmethod
    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """int tokens (B, grid_h * grid_w) -> uint8 RGB (B, H, W, 3)."""


def compute_device() -> torch.device:
    """The GPU when this process sees one (a Ray actor sees only the GPUs it was given), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class OnDevice:
    """Where a module's weights live. Samplers and likelihoods run there; trajectories and schedule decisions stay
    on the CPU (small, and what crosses processes)."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prompt_features_cpu(self, cond: torch.Tensor) -> torch.Tensor:
        """`prompt_features` for CPU conditioning, returned on the CPU (the schedule policy's input)."""
        return self.prompt_features(cond.to(self.device)).cpu()


class WordPrompts(OnDevice):
    """The shapes world's prompt conditioning, shared by the tiny models: the prompt's word ids (padded to
    MAX_WORDS) read through the model's own `word_emb`, the null prompt for guidance, and their mean word
    embedding as the schedule policy's prompt features."""

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([tokenize(p) for p in prompts], dtype=torch.long)

    def null_conditioning(self, batch: int) -> torch.Tensor:
        return torch.tensor([null_tokens()] * batch, dtype=torch.long)

    @property
    def prompt_feature_dim(self) -> int:
        return self.word_emb.embedding_dim

    @torch.no_grad()
    def prompt_features(self, cond: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of the prompt words' rows of the embedding (padding excluded): (B, D)."""
        table = self.word_emb.weight if table is None else table
        words = (cond != WORD_ID[PAD]).float()
        return (F.embedding(cond, table) * words[..., None]).sum(1) / words.sum(1, keepdim=True).clamp(min=1)

    def prompt_table(self) -> torch.Tensor:
        return self.word_emb.weight.detach().cpu().clone()


class MaskedTokenModel(OnDevice, nn.Module, ABC):
    """Given token ids (with `mask_id` where masked) and conditioning, logits over the codebook everywhere.

    Conditioning is a tensor whose first dimension is the batch; classifier-free guidance is the sampler's
    business, through `null_conditioning`. An image model takes its codebook and grid from its tokenizer; a text
    model (TinyMDLM) overrides `codebook_size` and `num_tokens` (its vocabulary and completion length) and decodes
    texts instead of images.
    """

    kind: str  # the ModelConfig.kind that builds it; checkpoints record it
    tokenizer: ImageTokenizer

    @property
    def codebook_size(self) -> int:
        return self.tokenizer.codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.tokenizer.grid

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text conditioning for a batch of prompts."""

    @abstractmethod
    def null_conditioning(self, batch: int) -> torch.Tensor:
        """The unconditional conditioning used for guidance."""

    @abstractmethod
    def prompt_features(self, cond: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """A pooled, detached embedding of the prompt (B, D) for the schedule policy to read; `table`: a copy of
        `prompt_table()` to read it through instead of the live weights."""

    def prompt_table(self) -> torch.Tensor | None:
        """A copy of the trained weights `prompt_features` reads (the schedule policy's frozen prompt encoder), or
        None when they do not train (a frozen text encoder)."""
        return None

    @abstractmethod
    def token_table(self) -> torch.Tensor:
        """A copy of a frozen embedding of every token id, the mask id last ((codebook_size + 1, C)): the schedule
        policy pools the canvas through it."""

    @property
    @abstractmethod
    def prompt_feature_dim(self) -> int: ...

    @abstractmethod
    def forward(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """tokens (B, N) long, cond (B, ...) -> logits (B, N, codebook_size)."""

    def decode_images(self, tokens: torch.Tensor) -> np.ndarray:
        return self.tokenizer.decode(tokens.cpu().numpy())
