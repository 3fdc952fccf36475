"""Batched trajectory samplers for masked-token models, images and texts: MaskGIT confidence sampling (LLaDA's
low-confidence re-masking), random re-masking and MDLM ancestral ("emerge") sampling, optionally block by block
(LLaDA's semi-autoregressive sampler), with every knob settable per step and per sample, recording what an RL
learner needs.

One step, given knobs (remask_ratio r, temperature tau, remask_temperature g, guidance w when the family has it):
  logits = l_c + w (l_c - l_u)                       classifier-free guidance (w = 0: one forward pass)
  log p  = log_softmax(logits / tau)                 the sampling distribution; its log-probs are recorded
  x      ~ p at every masked position                (Gumbel-max; greedy argmax on deterministic steps)
  maskgit, low_confidence: keep masked the floor(N r) masked positions of lowest log p(x) + g * Gumbel, commit
           the rest
  random:  the same with uniformly random scores in place of log p(x)
  emerge:  commit each masked position with probability (m - r) / m, m = fraction masked now
N is the positions of the current block: with `block_length` the canvas is decoded in blocks left to right, the
schedule's steps split evenly between them, and only the current block's positions are committed; without it the
whole canvas is one block. A block's last step commits the rest of it; MaskGIT commits at least one token per step.

Which positions get committed is part of the environment: the model policy's likelihood is that of the committed
token values, as in Co-GRPO. `replay_log_probs` recomputes those likelihoods with gradients.

A trajectory's named tensors: `cond` (the conditioning), `tokens` (final), `commit_step` (the step that committed
each position) and `token_logp` (the behaviour log-prob of each committed token, 0 on greedy steps); the canvas
before any step is rebuilt from tokens and commit steps, so a sample costs two integer grids and a float per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from cogrpo.models.interface import MaskedTokenModel
from cogrpo.models.schedule_policy import ScheduleEncoder
from cogrpo.proto.config import SchedulePolicyConfig
from cogrpo.proto.kinds import MASKED_IMAGE_KNOBS
from cogrpo.proto.messages import Trajectory
from cogrpo.rollout.schedule import DecisionLog

SAMPLERS = ("maskgit", "emerge", "low_confidence", "random")
# a text family's knobs are the first three (no guidance)
_R, _TAU, _G, _W = (tuple(knob.name for knob in MASKED_IMAGE_KNOBS).index(k)
                    for k in ("remask_ratio", "temperature", "remask_temperature", "guidance"))


class ScheduleInputs(ScheduleEncoder):
    """What the schedule policy reads of a masked model's decoding besides the step and the prompt: the fraction
    still masked and, with `canvas_input: pooled`, the canvas pooled through a frozen copy of the model's token
    embedding (a buffer, saved and sent with the policy)."""

    def __init__(self, model: MaskedTokenModel, config: SchedulePolicyConfig):
        table = model.token_table() if config.canvas_input == "pooled" else None
        super().__init__(model, config, state_dim=1 + (0 if table is None else table.shape[1]))
        self.register_buffer("token_table", table)

    def state(self, canvas: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """(B, F) on the CPU: the fraction masked, then the pooled canvas."""
        fraction = masked.float().mean(1).cpu()[:, None]
        if self.token_table is None:
            return fraction
        return torch.cat([fraction, F.embedding(canvas.cpu(), self.token_table).mean(1)], 1)


def _gumbel(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=generator.device).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def canvas_before(traj: Trajectory, step: int, mask_id: int) -> torch.Tensor:
    """The canvas when executed step `step` began: the positions committed before it, the mask id elsewhere."""
    tokens, commit_step = traj.tensors["tokens"], traj.tensors["commit_step"]
    return torch.where(commit_step < step, tokens, torch.full_like(tokens, mask_id))


def _model_logits(model: MaskedTokenModel, canvas: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
                  knobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(conditional logits, unconditional ones or None when no sample is guided, guidance (B,)), as the model
    returns them (bf16 under DeepSpeed on GPUs). knobs: (B, K); a family without a guidance knob is not guided."""
    guidance = knobs[:, _W] if knobs.shape[1] > _W else knobs.new_zeros(len(knobs))
    if bool((guidance == 0).all()):
        return model(canvas, cond), None, guidance
    cond_logits, null_logits = model(torch.cat([canvas, canvas]), torch.cat([cond, null])).chunk(2)
    return cond_logits, null_logits, guidance


def _tempered_log_softmax(cond_logits: torch.Tensor, null_logits: torch.Tensor | None, guidance: torch.Tensor,
                          temperature: torch.Tensor) -> torch.Tensor:
    """log-softmax of the guided, temperature-scaled logits in float32: (B, N, V)."""
    logits = cond_logits.float()
    if null_logits is not None:
        logits = logits + guidance[:, None, None] * (logits - null_logits.float())
    return F.log_softmax(logits / temperature[:, None, None], dim=-1)


def guided_log_probs(model: MaskedTokenModel, canvas: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
                     knobs: torch.Tensor) -> torch.Tensor:
    """log-softmax of the guided, temperature-scaled logits: (B, N, V)."""
    return _tempered_log_softmax(*_model_logits(model, canvas, cond, null, knobs), knobs[:, _TAU])


def _picked(cond_logits, null_logits, guidance, temperature, targets):
    return _tempered_log_softmax(cond_logits, null_logits, guidance, temperature).gather(
        -1, targets[..., None]).squeeze(-1)


def chosen_log_probs(model: MaskedTokenModel, canvas: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
                     knobs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets) (B, N) under the guided, tempered distribution, differentiably. The float32 guidance,
    temperature and log-softmax over the codebook are recomputed in backward instead of kept (activation
    checkpointing), so autograd holds only the model's own logits, not several (B, N, V) float32 copies."""
    cond_logits, null_logits, guidance = _model_logits(model, canvas, cond, null, knobs)
    if not torch.is_grad_enabled():
        return _picked(cond_logits, null_logits, guidance, knobs[:, _TAU], targets)
    return checkpoint(_picked, cond_logits, null_logits, guidance, knobs[:, _TAU], targets, use_reentrant=False)


def _commit_maskgit(masked, score, knobs, size, last, stochastic, generator):
    """masked: the current block's masked positions (B, N); size: the block's positions."""
    n_masked = masked.sum(1)
    keep = torch.zeros_like(n_masked) if last else torch.minimum(
        torch.floor(size * knobs[:, _R]).long().clamp(min=0), (n_masked - 1).clamp(min=0))
    confidence = score
    if stochastic:
        confidence = confidence + knobs[:, _G, None] * _gumbel(tuple(masked.shape), generator)
    confidence = confidence.masked_fill(~masked, float("inf"))
    rank = confidence.argsort(dim=1).argsort(dim=1)
    return masked & (rank >= keep[:, None])


def _commit_random(masked, score, knobs, size, last, stochastic, generator):
    scores = torch.rand(tuple(masked.shape), generator=generator, device=generator.device)
    return _commit_maskgit(masked, scores, knobs, size, last, False, generator)


def _commit_emerge(masked, score, knobs, size, last, stochastic, generator):
    if last:
        return masked
    if not stochastic:  # deterministic steps take the expected count by confidence, with no noise
        return _commit_maskgit(masked, score, knobs, size, last, False, generator)
    frac = masked.float().sum(1) / size
    p = ((frac - knobs[:, _R]) / frac.clamp(min=1e-9)).clamp(0.0, 1.0)
    return masked & (torch.rand(tuple(masked.shape), generator=generator, device=generator.device) < p[:, None])


COMMITS = {"maskgit": _commit_maskgit, "low_confidence": _commit_maskgit, "random": _commit_random,
           "emerge": _commit_emerge}


def blocks_of(n: int, steps: int, block_length: int | None) -> tuple[int, int]:
    """(positions per block, schedule steps per block) of a canvas of n positions decoded in `steps` steps."""
    size = n if block_length is None else block_length
    if n % size or steps % (n // size):
        raise ValueError(f"{n} positions in blocks of {size} need a step count divisible by {n // size}, not {steps}")
    return size, steps // (n // size)


def block_ends(plan: list[int], per_block: int) -> list[bool]:
    """Per executed step of `plan`: whether it is its block's last (the next executed step is in a later block, or
    there is none), the step that commits the rest of the block."""
    return [t == len(plan) - 1 or plan[t + 1] // per_block != step // per_block for t, step in enumerate(plan)]


@torch.no_grad()
def generate(model: MaskedTokenModel, cond: torch.Tensor, schedule, steps: int, seed: int,
             sampler: str = "maskgit", stochastic: torch.Tensor | None = None, plan: list[int] | None = None,
             effective: torch.Tensor | None = None, block_length: int | None = None) -> Trajectory:
    """Decode a batch from an all-masked canvas and record its trajectory. Deterministic for a given seed.

    steps: length of the schedule. plan: the schedule steps to execute, in order (default all; MixGRPO-Flash
    skips some after its window; the last one must be steps - 1). stochastic: (len(plan),) bool; False steps
    decode greedily (argmax tokens, noiseless selection, mean schedule action) and carry no log-prob
    (MixGRPO's deterministic segments). Default: every step is stochastic. effective: (len(plan), K) bool, the
    knobs that could change the outcome at each executed step (default: all). The schedule's encoder (a
    ScheduleInputs, or None for the fraction masked and the live prompt features) makes what the schedule reads.
    block_length: positions per block, decoded left to right (None: one block).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}")
    commit_fn = COMMITS[sampler]
    plan = list(range(steps)) if plan is None else list(plan)
    if not plan or plan[-1] != steps - 1 or any(b <= a for a, b in zip(plan, plan[1:])):
        raise ValueError(f"plan must be increasing and end at step {steps - 1}: {plan}")
    size, per_block = blocks_of(model.num_tokens, steps, block_length)
    block, ends = [step // per_block for step in plan], block_ends(plan, per_block)
    stochastic = torch.ones(len(plan), dtype=torch.bool) if stochastic is None else stochastic.bool()
    if effective is None:
        effective = torch.ones(len(plan), len(MASKED_IMAGE_KNOBS), dtype=torch.bool)
    # schedule actions are drawn on the CPU; token noise where the model runs (the same generator on a CPU)
    device = model.device
    generator = torch.Generator().manual_seed(seed)
    noise = generator if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
    b, n = cond.shape[0], model.num_tokens
    position_block = (torch.arange(n) // size).to(device)
    cond_cpu, cond = cond, cond.to(device)
    null = model.null_conditioning(b).to(device)
    encoder = ScheduleInputs(model, SchedulePolicyConfig()) if schedule.encoder is None else schedule.encoder
    prompt_feat = encoder.prompt(model, cond_cpu)
    canvas = torch.full((b, n), model.mask_id, dtype=torch.long, device=device)
    commit_step = torch.full((b, n), len(plan), dtype=torch.long, device=device)
    token_logp = torch.zeros(b, n, device=device)
    log = DecisionLog(prompt_feat)
    was_training = model.training
    model.eval()
    try:
        for t, schedule_step in enumerate(plan):
            masked = canvas == model.mask_id
            state = encoder.state(canvas, masked)
            decision = schedule.decide(schedule_step, steps, state, prompt_feat, bool(stochastic[t]), generator,
                                       effective[t])
            step_knobs = decision.knobs.to(device)
            logp_all = guided_log_probs(model, canvas, cond, null, step_knobs)
            if stochastic[t]:
                sampled = (logp_all + _gumbel(tuple(logp_all.shape), noise)).argmax(-1)
            else:
                sampled = logp_all.argmax(-1)
            logp_sampled = logp_all.gather(-1, sampled[..., None]).squeeze(-1)
            eligible = masked & (position_block == block[t])
            commit = commit_fn(eligible, logp_sampled, step_knobs, size, ends[t], bool(stochastic[t]), noise)
            canvas = torch.where(commit, sampled, canvas)
            commit_step[commit] = t
            if stochastic[t]:
                token_logp[commit] = logp_sampled[commit]
            log.record(state, decision)
    finally:
        model.train(was_training)
    return log.trajectory({"cond": cond_cpu, "tokens": canvas.cpu(), "commit_step": commit_step.cpu(),
                           "token_logp": token_logp.cpu()}, stochastic, plan, steps, seed)


def replay_log_probs(model: MaskedTokenModel, traj: Trajectory, steps: list[int],
                     select: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probs of the recorded final tokens under the model, re-run on the canvas before each step in `steps`
    with that step's knobs: (B, len(steps), N). Differentiable; one batched forward pass for all steps. select
    (B, len(steps)) bool: only those (sample, step) pairs are run, the others are 0 (none: no pass). Entries where
    commit_step != step are not that step's actions; callers mask them. The forward pass runs on the model's
    device; the (small) result comes back to the CPU trajectory's device, gradients included."""
    b, device = traj.batch_size, model.device
    cond, tokens = traj.tensors["cond"], traj.tensors["tokens"]
    canvases = torch.cat([canvas_before(traj, t, model.mask_id) for t in steps])
    conds = cond.repeat(len(steps), *([1] * (cond.dim() - 1)))
    knobs = torch.cat([traj.knobs[:, t] for t in steps])
    targets = tokens.repeat(len(steps), 1)
    rows = None if select is None else select.transpose(0, 1).reshape(-1)  # step-major, as the canvases
    if rows is not None and not bool(rows.any()):
        return torch.zeros(b, len(steps), tokens.shape[1])
    if rows is not None:
        canvases, conds, knobs, targets = canvases[rows], conds[rows], knobs[rows], targets[rows]
    logp = chosen_log_probs(model, canvases.to(device), conds.to(device),
                            model.null_conditioning(conds.shape[0]).to(device), knobs.to(device),
                            targets.to(device)).to(tokens.device)
    if rows is not None:
        full = logp.new_zeros(len(steps) * b, logp.shape[1])
        full[rows] = logp
        logp = full
    return logp.view(len(steps), b, -1).transpose(0, 1)
