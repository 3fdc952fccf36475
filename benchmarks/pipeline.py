"""Runtime overhead and pipelining: seconds per training iteration of the Ray runtime (max_staleness 0) over the
single-process trainer on the same work (same prompts, seeds and batches; target <= 1.15 on 2 cores), and the
speed-up of one-step-off (max_staleness 1: the next rollout overlaps the current update). Evaluation is left out
(it is not part of the loop being compared).

The single-process trainer and the Ray trainer live side by side and take turns, iteration by iteration (each
pair runs the same iteration, so the same kind of update): the machine's speed drifts by more than the effect
being measured over the minutes a block of iterations takes, and interleaving cancels that drift. One-step-off
cannot be interleaved (its next rollout runs in the background by design), so it runs as its own block after the
Ray runtime's. CPU seconds per process over the paired iterations show where the time goes.

    .venv/bin/python benchmarks/pipeline.py [--iterations 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import psutil
import ray

from cogrpo.cluster.loop import TrainingLoop, trainer
from cogrpo.proto.config import load_config

PHASES = ("rollout_s", "update_s", "sync_s")
KERNEL = "(kernel, all)"  # system CPU seconds of all processes together: page faults, syscalls


def build(config_path: str, overrides: list[str]) -> TrainingLoop:
    config = load_config(config_path, overrides)
    return trainer(config, tempfile.mkdtemp(prefix="bench-pipeline-"), log=lambda line: None)


def timed(loop: TrainingLoop, iteration: int) -> dict:
    start = time.perf_counter()
    row = loop.iterate(iteration)
    return {"s": time.perf_counter() - start, **{key: row.get(key, 0.0) for key in PHASES}}


def summary(rows: list[dict]) -> dict:
    """Mean wall seconds per iteration and the mean of each phase the loop logs (sync only under Ray)."""
    return {"s_per_iteration": statistics.fmean(r["s"] for r in rows),
            **{key: statistics.fmean(r[key] for r in rows) for key in PHASES}}


def cpu_seconds() -> dict[int, tuple[str, float, float]]:
    """(name, user + system CPU seconds, system CPU seconds) of every process on the machine, by pid."""
    seconds = {}
    for process in psutil.process_iter(["name"]):
        try:
            times = process.cpu_times()
            seconds[process.pid] = (process.info["name"], times.user + times.system, times.system)
        except psutil.Error:
            continue
    return seconds


def add_cpu(total: dict[str, float], before: dict, after: dict) -> None:
    """Add the CPU seconds spent between two snapshots to total, by process name (Ray names its workers
    ray::Class; Ray's own daemons keep theirs), and all processes' kernel seconds under "(kernel, all)"."""
    for pid, (name, seconds, system) in after.items():
        _, seconds_before, system_before = before.get(pid, (name, 0.0, 0.0))
        total[name] = total.get(name, 0.0) + seconds - seconds_before
        total[KERNEL] = total.get(KERNEL, 0.0) + system - system_before


def per_iteration(total: dict[str, float], iterations: int) -> dict[str, float]:
    """The busiest processes first; under 0.01 s per iteration left out."""
    busy = {name: round(s / iterations, 2) for name, s in total.items() if s / iterations >= 0.01}
    return dict(sorted(busy.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/smoke-cpu.yaml")
    parser.add_argument("--iterations", type=int, default=6)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    common = ["train.eval_at_start=false", f"train.iterations={args.iterations + 2}"]
    iterations = range(1, args.iterations + 1)

    local = build(args.config, common + ["runtime=local"])
    ray_trainer = build(args.config, common + ["runtime=ray", "cluster.max_staleness=0"])
    local.iterate(0)  # warm-up: first-call allocations, Ray worker start-up
    ray_trainer.iterate(0)
    rows: dict[str, list[dict]] = {"local": [], "ray": []}
    cpu: dict[str, dict[str, float]] = {"local": {}, "ray": {}}
    for iteration in iterations:
        for name, loop in (("local", local), ("ray", ray_trainer)):
            before = cpu_seconds()
            rows[name].append(timed(loop, iteration))
            add_cpu(cpu[name], before, cpu_seconds())
    ray_trainer.close()

    one_step_off = build(args.config, common + ["runtime=ray", "cluster.max_staleness=1"])
    one_step_off.iterate(0)
    rows["ray one-step-off"] = [timed(one_step_off, iteration) for iteration in iterations]
    one_step_off.close()
    ray.shutdown()

    summaries = {name: summary(measured) for name, measured in rows.items()}
    for name, means in summaries.items():
        processes = per_iteration(cpu[name], args.iterations) if name in cpu else None
        print(json.dumps({"run": name, **{k: round(v, 3) for k, v in means.items()},
                          "cpu_s_per_iteration": processes}), flush=True)
    mean = {name: means["s_per_iteration"] for name, means in summaries.items()}
    paired = [r["s"] / l["s"] for r, l in zip(rows["ray"], rows["local"])]
    print(json.dumps({"ray_over_local": round(mean["ray"] / mean["local"], 3),
                      "ray_over_local_per_pair": [round(p, 3) for p in paired],
                      "one_step_off_speedup": round(mean["ray"] / mean["ray one-step-off"], 3)}))


if __name__ == "__main__":
    main()
