"""Text learning benchmark: the shipped TinyMDLM trained by GRPO with each likelihood estimator (the exact trajectory
replay, MaskGRPO's AR-like re-masking, UniGRPO's random rates, d1's one-step estimate) and by Co-GRPO (theta by
trajectory replay, alternating with the schedule policy), each with the same rollouts (configs/text-smoke-cpu.yaml:
8 prompts x 8 completions per iteration) and seeds. Per method: minutes of training, and held-out accuracy per task
before and after. Writes the table into BENCHMARKS.md between its markers.

    .venv/bin/python benchmarks/text_learning.py [--iterations 60] [--methods trajectory,maskgrpo,...] [--seeds 0]
                                                 [--set KEY=VALUE ...]
"""

from __future__ import annotations

import json
from pathlib import Path

from learning import base_summaries, method_arguments, one_process_run, write_block

from cogrpo.cluster.loop import trainer
from cogrpo.data.reasoning import TASK_KINDS
from cogrpo.proto.config import load_config

REMASKING = ["algo.mode=grpo", "algo.inner_epochs=4"]
METHODS = {
    "trajectory": ["algo.mode=grpo", "algo.theta_likelihood=trajectory"],
    "maskgrpo": [*REMASKING, "algo.theta_likelihood=maskgrpo", "algo.maskgrpo_gamma=0.6"],
    "unigrpo": [*REMASKING, "algo.theta_likelihood=unigrpo"],
    "d1": [*REMASKING, "algo.theta_likelihood=d1"],
    "cogrpo": ["algo.mode=cogrpo", "algo.theta_likelihood=trajectory"],
}
# The MaskGRPO paper's order of the re-masking estimators, best first.
PAPER_ORDER = ("maskgrpo", "unigrpo", "d1")


def run(config) -> tuple[dict, float]:
    """The run in one process: its held-out summary at the end, and its training minutes."""
    loop = trainer(config, log=lambda line: None)
    try:
        evals = loop.fit()
    finally:
        loop.close()
    minutes = sum(row["iteration_s"] for row in loop.run.metrics) / 60
    return next(r for r in evals if r["split"] == "heldout"), minutes


def main() -> None:
    args = method_arguments("configs/text-smoke-cpu.yaml", 60, METHODS, "runs/bench-text-learning", "0").parse_args()
    steps = load_config(args.config, args.set).eval.steps
    common = one_process_run(args.iterations, (steps,), args.set)
    rows, bases = [], {}
    for method in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            config = load_config(args.config, [*common, *METHODS[method], f"seed={seed}",
                                               f"train.run_dir={args.out}/{method}-seed{seed}"])
            if seed not in bases:
                bases[seed] = base_summaries(config, (steps,))[("heldout", steps)]
            after, minutes = run(config)
            row = {"method": method, "seed": seed, "minutes": round(minutes, 1),
                   "base": bases[seed]["accuracy"], "after": after["accuracy"],
                   **{f"base {t}": bases[seed]["by_task"][t] for t in TASK_KINDS},
                   **{t: after["by_task"][t] for t in TASK_KINDS}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = render(rows, args)
    print(table)
    write_block(Path(args.write), "text-learning", table)


def render(rows: list[dict], args) -> str:
    sets = "".join(f" --set {assignment}" for assignment in args.set)
    lines = [f"`.venv/bin/python benchmarks/text_learning.py --iterations {args.iterations} --methods {args.methods}"
             f" --seeds {args.seeds}{sets}`", "",
             "| method | seed | minutes | " + " | ".join(f"{t} (base)" for t in TASK_KINDS) + " | accuracy (base) "
             "| gain |", "| --- | --- | --- | " + "--- | " * len(TASK_KINDS) + "--- | --- |"]
    for r in rows:
        tasks = " | ".join(f"{r[t]:.3f} ({r[f'base {t}']:.3f})" for t in TASK_KINDS)
        lines.append(f"| {r['method']} | {r['seed']} | {r['minutes']} | {tasks} | {r['after']:.3f} ({r['base']:.3f}) "
                     f"| {r['after'] - r['base']:+.3f} |")
    return "\n".join(lines + ["", *relations(rows)])


def relations(rows: list[dict]) -> list[str]:
    """The targets and the MaskGRPO paper's order, each said to hold or not (means over seeds)."""
    def gain(method: str) -> float | None:
        values = [r["after"] - r["base"] for r in rows if r["method"] == method]
        return sum(values) / len(values) if values else None

    out = []
    best = max((r for r in rows), key=lambda r: r["after"] - r["base"], default=None)
    if best is not None:
        holds = best["after"] - best["base"] >= 0.10 and best["minutes"] <= 15
        out.append(f"- RL raises held-out accuracy by at least 10 points within 15 CPU-minutes: "
                   f"**{'holds' if holds else 'does not hold'}** (best: {best['method']} "
                   f"{best['after'] - best['base']:+.3f} in {best['minutes']} min).")
    gains = [gain(m) for m in PAPER_ORDER]
    if all(g is not None for g in gains):
        holds = gains[0] >= gains[1] >= gains[2]
        numbers = ", ".join(f"{m} {g:+.3f}" for m, g in zip(PAPER_ORDER, gains))
        out.append(f"- The paper's order MaskGRPO >= UniGRPO >= d1: **{'holds' if holds else 'does not hold'}** "
                   f"({numbers}).")
    return out


if __name__ == "__main__":
    main()
