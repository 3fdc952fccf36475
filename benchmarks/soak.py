"""Soak: many iterations of a tiny config on the Ray runtime, and the resident memory (RSS) of the driver and of
every actor after warm-up, every warm-up-length of iterations after it, and at the end. A leak (trajectories kept
alive, object references never released, buffers growing per weight version) shows as growth; the target is < 10%
for every process.

    .venv/bin/python benchmarks/soak.py [--iterations 300] [--warmup 30]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import psutil
import ray

from cogrpo.cluster.loop import TrainingLoop, trainer
from cogrpo.proto.config import load_config

TINY = ["runtime=ray", "algo.prompts_per_iteration=2", "algo.group_size=4", "sampler.steps=4",
        "sampler.batch_size=8", "algo.alternate_every=1", "train.eval_at_start=false"]


def resident_mb(loop: TrainingLoop) -> dict[str, float]:
    """RSS per process: the driver, then each actor by role (all on this machine for the embedded cluster)."""
    runtime = loop.runtime
    roles = {"rollout": runtime.rollouts.actors, "reward": runtime.rewards.actors, "learner": runtime.learners}
    out = {"driver": psutil.Process().memory_info().rss / 2**20}
    for role, actors in roles.items():
        for k, actor in enumerate(actors):
            _, pid = ray.get(actor.incarnation.remote())
            out[f"{role}{k}"] = psutil.Process(pid).memory_info().rss / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/smoke-cpu.yaml")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    config = load_config(args.config, TINY + [f"train.iterations={args.iterations}"])
    loop = trainer(config, tempfile.mkdtemp(prefix="bench-soak-"), log=lambda line: None)
    for iteration in range(args.warmup):
        loop.iterate(iteration)
    after_warmup = resident_mb(loop)
    trace = []  # (iteration, RSS per process): a leak keeps climbing, allocator warm-up levels off
    for iteration in range(args.warmup, args.iterations):
        loop.iterate(iteration)
        if (iteration + 1) % args.warmup == 0:
            trace.append((iteration + 1, resident_mb(loop)))
    at_end = trace[-1][1] if trace and trace[-1][0] == args.iterations else resident_mb(loop)
    loop.close()
    ray.shutdown()
    print(f"| process | RSS after {args.warmup} iterations (MB) | RSS after {args.iterations} (MB) | growth |")
    print("| --- | --- | --- | --- |")
    for name, start in after_warmup.items():
        print(f"| {name} | {start:.0f} | {at_end[name]:.0f} | {100 * (at_end[name] / start - 1):+.1f}% |")
    for iteration, rss in trace:
        print(json.dumps({"iteration": iteration, **{k: round(v) for k, v in rss.items()}}))
    worst = max(at_end[n] / s - 1 for n, s in after_warmup.items())
    print(json.dumps({"iterations": args.iterations, "worst_growth_pct": round(100 * worst, 1)}))


if __name__ == "__main__":
    main()
