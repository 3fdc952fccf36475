"""Plots written into each run directory: the reward curve and the learned schedule against the hand schedule."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def plot_rewards(metrics: list[dict], evals: list[dict], path: Path) -> None:
    """Each reward per iteration (lines) and per evaluation (markers, one style per split and step count, in the
    reward's colour), beside GenEval's overall per evaluation (grey)."""
    fig, ax = plt.subplots(figsize=(9, 4))
    its = [m["iteration"] for m in metrics]
    colours = {}
    for key in sorted(k for k in metrics[0] if k.startswith("reward/")):
        (line,) = ax.plot(its, [m[key] for m in metrics], lw=1, alpha=0.8, label=f"train {key[7:]}")
        colours[key] = line.get_color()
    markers = "os^vD"
    for n, (split, steps) in enumerate(sorted({(e["split"], e["steps"]) for e in evals})):
        rows = [e for e in evals if (e["split"], e["steps"]) == (split, steps)]
        x, style = [e["iteration"] for e in rows], f"{markers[n % len(markers)]}--"
        if "overall" in rows[0]:  # GenEval's, on a family that has it
            ax.plot(x, [e["overall"] for e in rows], style, color="0.4", label=f"eval {split}@{steps} overall")
        for key, colour in colours.items():
            if key in rows[0]:
                ax.plot(x, [e[key] for e in rows], style, color=colour, label=f"eval {split}@{steps} {key[7:]}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_schedule(learned: torch.Tensor, hand_table: torch.Tensor, names: list[str], path: Path,
                  title: str = "") -> None:
    """Each knob's values per step (learned: as the schedule applied them in an evaluation) against the hand
    schedule's."""
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    steps = torch.arange(len(hand_table))
    for k, (ax, name) in enumerate(zip(axes[0], names)):
        ax.plot(steps, hand_table[:, k], "k--", label="hand")
        ax.plot(steps, learned[:, k], "o-", label="learned")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
