"""Activation checkpointing for the backbones the learner trains: each block's activations are recomputed in
backward instead of kept from the forward pass, trading about one more forward for memory that no longer grows
with depth. One mechanism for every family, ours rather than each library's switch (diffusers' UVit2DModel, aMUSEd's
transformer, fails with its own): the blocks are the entries of the model's block lists, found by name."""

from __future__ import annotations

from types import MethodType

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cogrpo.proto.errors import InputError

# the names the tiny models, diffusers' transformers (aMUSEd, Meissonic, SD3, FLUX) and LLaDA give their block lists
BLOCK_LISTS = frozenset({"blocks", "layers", "transformer_layers", "transformer_blocks", "single_transformer_blocks"})


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    forward = type(self).forward.__get__(self)
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Every block recomputes its activations in backward. The patched `forward` is a method bound to its block,
    so a deep copy (the frozen reference) is bound to the copy, and the weights' names do not change. A model with
    no block list is refused, so the setting never silently does nothing."""
    blocks = [block for name, module in model.named_modules() if isinstance(module, nn.ModuleList)
              and name.rsplit(".", 1)[-1] in BLOCK_LISTS for block in module]
    if not blocks:
        raise InputError(f"algo.activation_checkpointing: {type(model).__name__} has no block list "
                         f"({', '.join(sorted(BLOCK_LISTS))})")
    for block in blocks:
        block.forward = MethodType(_checkpointed_forward, block)
