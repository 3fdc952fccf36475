"""Runtime overhead and pipelining: seconds per training iteration of the Ray runtime (max_staleness 0) over the
single-process trainer on the same work (same prompts, seeds and batches; target <= 1.15 on 2 cores), and the
speed-up of one-step-off (max_staleness 1: the next rollout overlaps the current update). All three in one run,
after one warm-up iteration each; evaluation is left out (it is not part of the loop being compared).

    .venv/bin/python benchmarks/pipeline.py [--iterations 6]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import ray

from cogrpo.cluster.local import LocalTrainer
from cogrpo.cluster.ray_runtime import RayTrainer
from cogrpo.proto.config import load_config

RUNS = {"local": ["runtime=local"], "ray": ["runtime=ray", "cluster.max_staleness=0"],
        "ray one-step-off": ["runtime=ray", "cluster.max_staleness=1"]}


def timed_iterations(trainer, iterations: int) -> dict:
    """Wall seconds per iteration, and the mean of each phase the loop logs (sync only under Ray)."""
    trainer.iterate(0)  # warm-up: first-call allocations, Ray worker start-up
    start = time.perf_counter()
    rows = [trainer.iterate(iteration) for iteration in range(1, iterations + 1)]
    phases = {key: round(sum(r.get(key, 0.0) for r in rows) / iterations, 3)
              for key in ("rollout_s", "update_s", "sync_s")}
    return {"s_per_iteration": round((time.perf_counter() - start) / iterations, 3), **phases}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/smoke-cpu.yaml")
    parser.add_argument("--iterations", type=int, default=6)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    common = ["train.eval_at_start=false", f"train.iterations={args.iterations + 2}"]
    times = {}
    for name, overrides in RUNS.items():
        config = load_config(args.config, common + overrides)
        runtime = LocalTrainer if config.runtime == "local" else RayTrainer
        trainer = runtime(config, tempfile.mkdtemp(prefix="bench-pipeline-"), log=lambda line: None)
        measured = timed_iterations(trainer, args.iterations)
        times[name] = measured["s_per_iteration"]
        if isinstance(trainer, RayTrainer):
            trainer.shutdown()
        print(json.dumps({"run": name, **measured}), flush=True)
    ray.shutdown()
    print(json.dumps({"ray_over_local": round(times["ray"] / times["local"], 3),
                      "one_step_off_speedup": round(times["ray"] / times["ray one-step-off"], 3)}))


if __name__ == "__main__":
    main()
