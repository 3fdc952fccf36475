"""Flow learning benchmark: Flow-GRPO, Flow-GRPO-Fast, DanceGRPO, MixGRPO (progressive window), MixGRPO-Flash and
Flash*, the paper's window ablations (start only, random), Co-GRPO's schedule policy and DiffusionNFT on TinyFlow,
each with the same rollouts (configs/flow-smoke-cpu.yaml: 8 prompts x 8 images per iteration) and seeds. The window
moves every iterations / positions iterations, so a progressive window crosses every position within the run (the
paper's shift_every is for runs of hundreds of iterations). Per method: seconds per iteration, the model's forward
passes per image (sampling and training), and the held-out and training-split gains at 8 steps over the shipped
model. Writes the table into BENCHMARKS.md between its markers.

    .venv/bin/python benchmarks/flow_learning.py [--iterations 100] [--methods flow_grpo,mixgrpo,...] [--seeds 0,1]
                                                 [--set KEY=VALUE ...]
"""

from __future__ import annotations

import json
from pathlib import Path

from learning import base_scores, method_arguments, one_process_run, write_block

from cogrpo.cluster.loop import trainer
from cogrpo.proto.config import load_config

WINDOW = ["algo.steps.mode=window", "algo.steps.outside=deterministic"]
METHODS = {
    "flow_grpo": ["algo.steps.mode=all"],
    "flow_grpo_fast": [*WINDOW, "algo.steps.window=2", "algo.steps.shift=random", "algo.steps.shift_every=1"],
    "dance_grpo": ["algo.steps.mode=random", "algo.steps.fraction=0.5", "algo.steps.random_per=sample"],
    "mixgrpo": WINDOW,
    "mixgrpo_flash": [*WINDOW, "algo.steps.flash_ratio=0.5"],
    "mixgrpo_flash_star": [*WINDOW, "algo.steps.stride=0", "algo.steps.flash_ratio=0.25"],
    "window_at_start": [*WINDOW, "algo.steps.stride=0"],
    "random_window": [*WINDOW, "algo.steps.shift=random"],
    "cogrpo": ["algo.mode=cogrpo", "algo.steps.mode=all"],
    "diffusion_nft": ["algo.theta_objective=nft", "algo.steps.mode=none"],
}
EVAL_STEPS = (8,)


class ForwardCounter:
    """Counts the rows the model runs forward (one row: one image through the model once)."""

    def __init__(self):
        self.rows = 0

    def __call__(self, module, args, output):
        self.rows += args[0].shape[0]


def run(config) -> tuple[list[dict], list[dict], int]:
    """The run in one process, the model's forward rows counted over its iterations (the rollouts, theta's replay
    and the KL reference's), the evaluation after them not."""
    loop = trainer(config, log=lambda line: None)
    counter = ForwardCounter()
    learner = loop.runtime.learner
    hooks = [m.register_forward_hook(counter) for m in (loop.runtime.model, learner.reference) if m is not None]
    try:
        for iteration in range(config.train.iterations):
            loop.iterate(iteration)
        for hook in hooks:
            hook.remove()
        return loop.evaluate(config.train.iterations), loop.run.metrics, counter.rows
    finally:
        loop.close()


def main() -> None:
    args = method_arguments("configs/flow-smoke-cpu.yaml", 100, METHODS, "runs/bench-flow-learning", "0").parse_args()
    defaults = load_config(args.config, args.set)
    positions = defaults.sampler.steps - defaults.algo.steps.window + 1
    common = [*one_process_run(args.iterations, EVAL_STEPS, args.set),
              f"algo.steps.shift_every={max(1, args.iterations // positions)}"]
    rows = []
    for method in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            config = load_config(args.config, [*common, *METHODS[method], f"seed={seed}",
                                               f"train.run_dir={args.out}/{method}-seed{seed}"])
            base = base_scores(config, EVAL_STEPS)
            evals, metrics, forward_rows = run(config)
            images = sum(row["images"] for row in metrics)
            train_s = sum(row["iteration_s"] for row in metrics)
            scores = {(r["split"], r["steps"]): r["overall"] for r in evals}
            row = {"method": method, "seed": seed, "s_per_iteration": round(train_s / len(metrics), 2),
                   "forward_per_image": round(forward_rows / images, 1),
                   **{f"{split}@{steps}": round(v, 3) for (split, steps), v in scores.items()},
                   **{f"base {split}@{steps}": round(v, 3) for (split, steps), v in base.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = render(rows, args)
    print(table)
    write_block(Path(args.write), "flow-learning", table)


def render(rows: list[dict], args) -> str:
    sets = "".join(f" --set {assignment}" for assignment in args.set)
    lines = [f"`.venv/bin/python benchmarks/flow_learning.py --iterations {args.iterations} --methods {args.methods}"
             f" --seeds {args.seeds}{sets}`", "",
             "| method | seed | s / iteration | forward passes / image | held-out@8 (base) | gain | train@8 (base) "
             "| gain |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [f"{r[f'{s}@8']:.3f} ({r[f'base {s}@8']:.3f}) | {r[f'{s}@8'] - r[f'base {s}@8']:+.3f}"
                 for s in ("heldout", "train")]
        lines.append(f"| {r['method']} | {r['seed']} | {r['s_per_iteration']} | {r['forward_per_image']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines + ["", *relations(rows)])


def relations(rows: list[dict]) -> list[str]:
    """The MixGRPO paper's relations, each said to hold or not on these rows (means over seeds)."""
    def mean(method: str, key: str) -> float | None:
        values = [r[key] - r.get(f"base {key}", 0) if "@" in key else r[key] for r in rows if r["method"] == method]
        return sum(values) / len(values) if values else None

    gain, speed = (lambda m: mean(m, "heldout@8")), (lambda m: mean(m, "s_per_iteration"))
    claims = [
        ("MixGRPO's held-out gain is at least Flow-GRPO's and DanceGRPO's",
         ["mixgrpo", "flow_grpo", "dance_grpo"], lambda: gain("mixgrpo") >= max(gain("flow_grpo"), gain("dance_grpo"))),
        ("MixGRPO takes at most 0.5x Flow-GRPO's time per iteration", ["mixgrpo", "flow_grpo"],
         lambda: speed("mixgrpo") <= 0.5 * speed("flow_grpo")),
        ("MixGRPO-Flash takes at most 0.35x Flow-GRPO's time per iteration", ["mixgrpo_flash", "flow_grpo"],
         lambda: speed("mixgrpo_flash") <= 0.35 * speed("flow_grpo")),
        ("the progressive window's held-out gain beats the random window's and the start-only window's",
         ["mixgrpo", "random_window", "window_at_start"],
         lambda: gain("mixgrpo") > max(gain("random_window"), gain("window_at_start"))),
    ]
    out = []
    for claim, methods, holds in claims:
        if any(mean(m, "s_per_iteration") is None for m in methods):
            continue
        numbers = ", ".join(f"{m} {gain(m):+.3f} at {speed(m):.2f} s" for m in methods)
        out.append(f"- {claim}: **{'holds' if holds() else 'does not hold'}** ({numbers}).")
    return out


if __name__ == "__main__":
    main()
