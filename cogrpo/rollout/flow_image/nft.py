"""DiffusionNFT (arXiv 2509.16117) for the flow family: theta learns on the forward process of the finished images,
not on the sampler's transitions, so the rollouts may come from any solver (an all-ODE plan included).

Each image x0 is noised afresh at the times its decoding visited, x_t = (1 - t) x0 + t eps, and theta's velocity v
enters two implicit policies around the old one: the positive (1 - b) v_old + b v is pulled toward the
flow-matching target eps - x0 with weight r, the negative (1 + b) v_old - b v with weight 1 - r, where
r = 1/2 + clip(A / c, -1, 1) / 2 reads the group-relative advantage as the chance of beating the group. Each term
is the squared error of the implied clean image, divided by its own (detached) mean absolute error, as the paper
weights it; with a KL weight, the squared distance to the reference model's velocity is added.
"""

from __future__ import annotations

import torch
from torch import nn

from cogrpo.proto.config import AlgoConfig
from cogrpo.proto.family import Denominator, own_counts
from cogrpo.proto.messages import Trajectory
from cogrpo.rollout.batching import derived_seed


def velocity(model: nn.Module, xt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The model's float32 velocity for flattened rows, on its device."""
    device = next(model.parameters()).device
    return model(xt.to(device), t.to(device), cond.to(device)).float()


class ForwardProcessNFT:
    def __init__(self, algo: AlgoConfig):
        self.beta, self.adv_clip, self.kl_beta = algo.nft_beta, algo.nft_adv_clip, algo.kl_beta

    def inputs(self, traj: Trajectory, epochs: int) -> list[dict[str, torch.Tensor]]:
        """Per epoch: every sample noised once at each time its decoding visited before the end (t > 0), with
        fresh noise drawn from the trajectory's seed and the epoch."""
        latents, times = traj.tensors["latents"], traj.tensors["times"][:, :-1]
        views = []
        for epoch in range(epochs):
            generator = torch.Generator().manual_seed(derived_seed(traj.seed, epoch))
            noise = torch.randn((*times.shape, *latents.shape[2:]), generator=generator)
            views.append({"t": times.clone(), "noise": noise})
        return views

    def noised(self, traj: Trajectory, inputs: dict[str, torch.Tensor]):
        """Rows (sample, time) flattened: x_t, t, the condition, and the target eps - x0."""
        x0 = traj.tensors["latents"][:, -1]
        t, noise = inputs["t"], inputs["noise"]
        rows = t.shape[1]
        x0 = x0[:, None].expand_as(noise)
        xt = (1 - t)[..., None, None] * x0 + t[..., None, None] * noise
        cond = traj.tensors["cond"].repeat_interleave(rows, 0)
        return xt.flatten(0, 1), t.flatten(), cond, (noise - x0).flatten(0, 1)

    def prediction(self, model: nn.Module, traj: Trajectory, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The conditional velocity (no guidance: NFT trains the model, not the guided sampler) at each of the R
        noisings per sample, (B, R, N, C), on the model's device."""
        xt, t, cond, _ = self.noised(traj, inputs)
        return velocity(model, xt, t, cond).unflatten(0, inputs["t"].shape)

    def loss(self, model: nn.Module, traj: Trajectory, inputs: dict[str, torch.Tensor], old: torch.Tensor,
             advantages: torch.Tensor, reference: torch.Tensor | None,
             denominator: Denominator = own_counts) -> tuple[torch.Tensor, dict]:
        xt, t, cond, target = self.noised(traj, inputs)
        v = velocity(model, xt, t, cond)
        t, target = t.to(v.device), target.to(v.device)
        r = (0.5 + 0.5 * (advantages / self.adv_clip).clamp(-1, 1)).repeat_interleave(inputs["t"].shape[1])
        r, old = r.to(v.device), old.flatten(0, 1).to(v.device)
        positive = (1 - self.beta) * old + self.beta * v
        negative = (1 + self.beta) * old - self.beta * v
        scale = t[:, None, None]  # x0's error is t times the velocity's

        def weighted(prediction: torch.Tensor) -> torch.Tensor:
            error = scale * (prediction - target)
            return (error ** 2).mean((1, 2)) / error.detach().abs().mean((1, 2)).clamp(min=1e-5)

        positive_loss, negative_loss = weighted(positive), weighted(negative)
        noisings, elements = denominator(torch.tensor([positive_loss.numel(), v.numel()]))
        loss = ((r * positive_loss + (1 - r) * negative_loss) / self.beta).sum() / noisings
        metrics = {"nft_positive": (positive_loss.sum() / noisings).item(),
                   "nft_negative": (negative_loss.sum() / noisings).item()}
        if reference is not None:
            kl = ((v - reference.flatten(0, 1).to(v.device)) ** 2).sum() / elements
            loss = loss + self.kl_beta * kl
            metrics["kl_ref"] = kl.item()
        return loss, metrics
