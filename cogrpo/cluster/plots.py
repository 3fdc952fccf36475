"""Plots written into each run directory: the reward curve and the learned schedule against the hand schedule."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from cogrpo.models.schedule_policy import SchedulePolicy, squash  # noqa: E402
from cogrpo.proto.messages import KNOBS  # noqa: E402


def plot_rewards(metrics: list[dict], evals: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    its = [m["iteration"] for m in metrics]
    for key in sorted(k for k in metrics[0] if k.startswith("reward/")):
        ax.plot(its, [m[key] for m in metrics], lw=1, alpha=0.8, label=f"train {key[7:]}")
    for split in sorted({e["split"] for e in evals}):
        rows = [e for e in evals if e["split"] == split]
        ax.plot([e["iteration"] for e in rows], [e["overall"] for e in rows], "o-", label=f"eval {split} overall")
    ax.set_xlabel("iteration")
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@torch.no_grad()
def learned_schedule(policy: SchedulePolicy, hand_table: torch.Tensor, prompt_feat: torch.Tensor) -> torch.Tensor:
    """(T, len(KNOBS)): the policy's mean knobs per step, averaged over prompts, along the hand schedule's
    masked fractions."""
    steps = len(hand_table)
    ratio = hand_table[:, KNOBS.index("remask_ratio")]
    masked_before = torch.cat([torch.ones(1), ratio[:-1]])
    rows = []
    for t in range(steps):
        b = prompt_feat.shape[0]
        mean, _ = policy(torch.full((b,), t), steps, masked_before[t].expand(b), prompt_feat)
        rows.append(squash(hand_table[t].expand(b, -1), mean, policy.knob_index).mean(0))
    return torch.stack(rows)


def plot_schedule(learned: torch.Tensor, hand_table: torch.Tensor, path: Path, title: str = "") -> None:
    fig, axes = plt.subplots(1, len(KNOBS), figsize=(3.2 * len(KNOBS), 3))
    steps = torch.arange(len(hand_table))
    for k, (ax, name) in enumerate(zip(axes, KNOBS)):
        ax.plot(steps, hand_table[:, k], "k--", label="hand")
        ax.plot(steps, learned[:, k], "o-", label="learned")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
