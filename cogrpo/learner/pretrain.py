"""Supervised pretraining of the tiny models from scratch on their worlds.

Image models: each batch samples GenEval records over all six tasks and renders them; a fraction of prompts is
replaced by the null prompt so classifier-free guidance works. Then the model's objective: TinyMDM's BERT-style
masked-token cross-entropy (a cosine-distributed fraction of tokens masked per image), TinyFlow's rectified-flow
velocity regression (times logit-normal, as SD3 trains). TinyMDLM: tasks of the reasoning world's training split,
their reference completions (scratchpad and answer), the masked-diffusion cross-entropy on the completion.
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cogrpo.data.prompts import TASKS, sample_records
from cogrpo.data.reasoning import reference_completion, sample_tasks
from cogrpo.data.world import render, to_rgb
from cogrpo.learner.objectives import cosine_decay
from cogrpo.models.interface import MaskedTokenModel
from cogrpo.models.tiny_flow import TinyFlow, images_to_latents
from cogrpo.models.tiny_mdlm import TinyMDLM
from cogrpo.proto.config import PretrainConfig


def make_batch(model: torch.nn.Module, rng: random.Random, batch: int, p_uncond: float,
               generator: torch.Generator) -> tuple[np.ndarray, torch.Tensor]:
    """Rendered images (B, H, W, 3) uint8 and their conditioning, p_uncond of it the null prompt's."""
    records = sample_records(rng, batch, tasks=rng.sample(TASKS, len(TASKS)))
    images = to_rgb(np.stack([render(r, rng) for r in records]))
    cond = model.encode_prompts([r["prompt"] for r in records])
    drop = torch.rand(batch, generator=generator) < p_uncond
    null = model.null_conditioning(batch)
    return images, torch.where(drop.view(-1, *[1] * (cond.dim() - 1)), null, cond)


def mask_tokens(tokens: torch.Tensor, mask_id: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask ceil(N cos(pi/2 u)) random positions per row (at least one), u ~ U(0, 1)."""
    b, n = tokens.shape
    ratio = torch.cos(math.pi / 2 * torch.rand(b, generator=generator))
    count = (ratio * n).ceil().clamp(min=1).long()
    scores = torch.rand(b, n, generator=generator)
    rank = scores.argsort(1).argsort(1)
    masked = rank < count[:, None]
    return tokens.masked_fill(masked, mask_id), masked


def masked_token_loss(model: MaskedTokenModel, rng: random.Random, config: PretrainConfig,
                      generator: torch.Generator) -> torch.Tensor:
    images, cond = make_batch(model, rng, config.batch_size, config.p_uncond, generator)
    tokens = torch.from_numpy(model.tokenizer.encode(images))
    inputs, masked = mask_tokens(tokens, model.mask_id, generator)
    return F.cross_entropy(model(inputs, cond)[masked], tokens[masked])


def velocity_loss(model: TinyFlow, rng: random.Random, config: PretrainConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """|v(x_t, t) - (eps - x_0)|^2 at x_t = (1 - t) x_0 + t eps, t = sigmoid(N(0, 1))."""
    images, cond = make_batch(model, rng, config.batch_size, config.p_uncond, generator)
    x0 = images_to_latents(images)
    t = torch.sigmoid(torch.randn(len(x0), generator=generator))
    eps = torch.randn(x0.shape, generator=generator)
    x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
    return F.mse_loss(model(x_t, t, cond), eps - x0)


def mask_completions(tokens: torch.Tensor, mask_id: int, generator: torch.Generator) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """Each position masked with probability t ~ U(0, 1) per row; for half the rows also everything after a random
    cut, the states a block-by-block sampler visits. At least one position per row."""
    b, n = tokens.shape
    masked = torch.rand(b, n, generator=generator) < torch.rand(b, 1, generator=generator)
    cut = torch.randint(0, n, (b, 1), generator=generator)
    cut[torch.rand(b, generator=generator) < 0.5] = n
    masked |= torch.arange(n)[None, :] >= cut
    masked[torch.arange(b), torch.randint(0, n, (b,), generator=generator)] = True
    return tokens.masked_fill(masked, mask_id), masked


def masked_text_loss(model: TinyMDLM, rng: random.Random, config: PretrainConfig,
                     generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy at the masked positions of the reference completions (a scratchpad, "#" and the answer, EOS
    after)."""
    tasks = sample_tasks(rng, config.batch_size, "train")
    tokens = model.encode_completions([reference_completion(t) for t in tasks])
    inputs, masked = mask_completions(tokens, model.mask_id, generator)
    return F.cross_entropy(model(inputs, model.encode_prompts([t["prompt"] for t in tasks]))[masked], tokens[masked])


LOSSES = {"tiny_mdm": masked_token_loss, "tiny_flow": velocity_loss, "tiny_mdlm": masked_text_loss}


def lr_at(step: int, config: PretrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
    return config.lr * warm * cosine_decay(step / max(1, config.steps), config.min_lr_ratio)


def pretrain(model: torch.nn.Module, config: PretrainConfig, seed: int,
             log: Callable[[dict], None] = lambda row: None) -> dict:
    """Train a tiny model (its `kind` picks the objective) in place; returns a summary (steps, images, seconds,
    final EMA loss)."""
    objective = LOSSES[model.kind]
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.99),
                                  weight_decay=config.weight_decay)
    model.train()
    ema = None
    start = time.time()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        loss = objective(model, rng, config, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            log({"step": step + 1, "loss": round(loss.item(), 4), "loss_ema": round(ema, 4),
                 "lr": group["lr"], "seconds": round(time.time() - start, 1)})
    model.eval()
    return {"steps": config.steps, "samples": config.steps * config.batch_size,
            "seconds": round(time.time() - start, 1), "loss_ema": round(ema, 4)}
