"""Capacity planning with the simulated cluster (docs/simulation.md): Meissonic-1B at 1024 px on H100s, the real
runtime (Ray actors, the driver's loop, the data flow, the learner's math on DeepSpeed, the weight channel, metrics)
with the model's passes replaced by waits, at 1 to 64 simulated rollout GPUs against 8 simulated learner GPUs, strict
on-policy (max_staleness 0) against one-step-off (max_staleness 1).

The cost model (`simulate:`; seconds on one H100, estimates from FLOPs at ~400 TFLOP/s of bf16, about 40% of the
H100 SXM's dense peak, not measured):
- Meissonic's transformer (MeissonFlow/Meissonic transformer/config.json: 14 double-stream and 28 single-stream
  blocks, 8 heads of 128, so width 1024; about 1B parameters) sees the 64x64 VQ tokens of a 1024 px image pooled 2x2
  to 32x32 (`downsample: true`), plus 77 text tokens: ~1,100 tokens. A forward is ~2 FLOPs x ~0.75B per-token
  parameters x 1,100 tokens + attention (4 x 42 blocks x 1,100^2 x 1024) ~= 2 TFLOP; guidance doubles it:
  rollout_s_per_image_step = 4 TFLOP / 400 TFLOP/s = 0.010 s (48 steps: ~0.5 s an image; the VQ decoder, ~2 TFLOP
  once per image, is left out).
- A trained step of a sample replays both guidance passes with gradients (forward + backward = 3 forwards) and
  recomputes them under activation checkpointing (a 4th): 4 x 4 TFLOP = 16 TFLOP: learner_s_per_sample_step =
  0.040 s. A replay without gradients (a stale sample's old log-probs, one-step-off) waits a third of it.
- HPSv2.1 and PickScore are ViT-H-14 at 224 px (~0.3 TFLOP an image each, under 1 ms); the host's resizing of a
  1024 px image dominates: reward_s_per_image = 0.010 s per term (an estimate).
- theta's weights: 2 GB in bf16; the buffer the weight channel moves here is 1/16 of that (weights_mb 128), so
  8 rollout workers, 2 learner ranks and the object store fit in this machine's memory. Sync seconds are this
  machine's (shared memory on 2 cores), not NVLink's.

The run: the Meissonic config (48 steps, guidance, MixGRPO's window of 8 trained steps, HPS + PickScore) with the
two policies updated every iteration (`algo.update: joint`, theta's replay each time: the heavy case), weak
scaling (one batch of 8 images per rollout GPU per iteration: N prompts of 8), minibatch 16. One Ray worker
stands for up to 8 rollout GPUs (`gpus_per_rollout_worker`), one reward worker for 8 reward GPUs, and 2
DeepSpeed learner ranks for 4 learner GPUs each. Measured per iteration after a warm-up: wall seconds, images per
second (of the rollout phase, and end to end), the driver's CPU seconds (time.process_time), weight-sync seconds,
each process group's CPU seconds, and each role's idle share (1 - the seconds it waits per GPU, from the cost
model, over the iteration). `--set` adds config overrides (`--set algo.minibatch=64`).

    .venv/bin/python benchmarks/simulated_cluster.py [--gpus 1,2,4,8,16,32,64] [--iterations 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import ray

from cogrpo.cluster.loop import trainer
from cogrpo.proto.config import Config, load_config
from cogrpo.rollout.steps import rollout_plan

LEARNER_GPUS, WORKER_GPUS, BATCH = 8, 8, 8  # simulated learner GPUs; at most this many GPUs per worker; images
SETTINGS = ["cluster.address=null", "cluster.num_cpus=2", "cluster.object_store_mb=2048", "threads=1",
            "cluster.rollout_gpus=0", "cluster.reward_gpus=0", "cluster.learner_gpus=0", "cluster.rollout_cpus=0.1",
            "cluster.reward_cpus=0.1", "cluster.learner_cpus=0.25", "cluster.weight_sync=object_store",
            "cluster.reward_workers=1", "cluster.learner_ranks=2", "algo.update=joint", "algo.replay_chunk=0",
            "algo.minibatch=16", "train.eval_at_start=false", "train.eval_metadata={}", "train.iterations=100",
            "simulate={gpus_per_reward_worker: 8, gpus_per_learner_rank: 4}"]
ROLES = ("Rollout", "Reward", "Learner")


def configure(base: str, gpus: int, staleness: int, extra: list[str]) -> Config:
    workers = min(gpus, WORKER_GPUS)
    return load_config(base, [*SETTINGS, f"cluster.rollout_workers={workers}", f"cluster.max_staleness={staleness}",
                              f"simulate.gpus_per_rollout_worker={gpus // workers}",
                              f"algo.prompts_per_iteration={gpus * BATCH // 8}", "algo.group_size=8",
                              f"sampler.batch_size={BATCH}", *extra])


def cpu_by_role() -> dict[str, float]:
    """CPU seconds of this process tree by role: the driver, each actor role (Ray titles its workers ray::Class),
    and the rest (Ray's own daemons)."""
    me, out = psutil.Process(), {}
    for process in [me, *me.children(recursive=True)]:
        try:
            title, times = " ".join(process.cmdline()), process.cpu_times()
        except psutil.Error:
            continue
        role = "driver" if process.pid == me.pid else next((r.lower() for r in ROLES if f"ray::{r}" in title), "ray")
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def waits_per_gpu(config: Config, images: int) -> dict[str, float]:
    """The seconds each role's GPUs wait per iteration by the cost model (every GPU of a role alike)."""
    s, c = config.simulate, config.cluster
    trained = len(rollout_plan(config, 0).trained) * (4 / 3 if c.max_staleness else 1)  # stale: an old-weights replay
    return {"rollout": images * config.sampler.steps * s.rollout_s_per_image_step
            / (c.rollout_workers * s.gpus_per_rollout_worker),
            "reward": images * len(config.rewards) * s.reward_s_per_image
            / (c.reward_workers * s.gpus_per_reward_worker),
            "learner": images * trained * s.learner_s_per_sample_step / (c.learner_ranks * s.gpus_per_learner_rank)}


def measure(config: Config, warmup: int, iterations: int) -> dict:
    loop = trainer(config, tempfile.mkdtemp(prefix="bench-simulated-"), log=lambda line: None)
    try:
        for iteration in range(warmup):
            loop.iterate(iteration)
        rows, driver, cpu_before = [], [], cpu_by_role()
        for iteration in range(warmup, warmup + iterations):
            clock, start = time.process_time(), time.perf_counter()
            row = loop.iterate(iteration)
            driver.append(time.process_time() - clock)
            rows.append({**row, "wall": time.perf_counter() - start})
        cpu_after = cpu_by_role()
    finally:
        loop.close()
    wall = statistics.fmean(r["wall"] for r in rows)
    images = rows[0]["images"]
    waits = waits_per_gpu(config, images)
    return {"rollout_gpus": config.cluster.rollout_workers * config.simulate.gpus_per_rollout_worker,
            "max_staleness": config.cluster.max_staleness, "images": images, "iteration_s": round(wall, 3),
            "rollout_images_per_s": round(images / statistics.fmean(r["rollout_s"] for r in rows), 2),
            "images_per_s": round(images / wall, 2), "driver_cpu_s": round(statistics.fmean(driver), 3),
            "driver_cpu_share": round(statistics.fmean(driver) / wall, 4),
            "sync_s": round(statistics.fmean(r["sync_s"] for r in rows), 3),
            "idle": {role: round(max(0.0, 1 - wait / wall), 3) for role, wait in waits.items()},
            "cpu_s_per_iteration": {role: round((cpu_after[role] - cpu_before.get(role, 0.0)) / iterations, 2)
                                    for role in cpu_after}}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    on = [r for r in results if r["max_staleness"] == 0]
    gpus = [r["rollout_gpus"] for r in on]
    ax.plot(gpus, [on[0]["rollout_images_per_s"] * g for g in gpus], "k--", label="ideal (N x 1 GPU's rollout rate)")
    ax.plot(gpus, [r["rollout_images_per_s"] for r in on], "o-", label="rollout phase, on-policy")
    for staleness, name in ((0, "end to end, on-policy"), (1, "end to end, one-step-off")):
        rows = [r for r in results if r["max_staleness"] == staleness]
        ax.plot([r["rollout_gpus"] for r in rows], [r["images_per_s"] for r in rows], "s-", label=name)
    ax.set(xscale="log", yscale="log", xlabel="simulated rollout GPUs (8 learner GPUs)", ylabel="images / s",
           title="Meissonic-1B, 1024 px, simulated H100s")
    ax.set_xticks(gpus, [str(g) for g in gpus])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(results: list[dict]) -> str:
    lines = ["| rollout GPUs | staleness | s / iteration | rollout img/s (ideal) | end-to-end img/s | driver CPU s "
             "(share) | sync s | idle: rollout, reward, learner | CPU s / iteration: rollout, reward, learner, "
             "ray |", "| " + " | ".join(["---"] * 9) + " |"]
    single = next(r["rollout_images_per_s"] for r in results if r["rollout_gpus"] == results[0]["rollout_gpus"])
    for r in results:
        idle, cpu = r["idle"], r["cpu_s_per_iteration"]
        rollout = (f"{r['rollout_images_per_s']:.1f} ({single * r['rollout_gpus'] / results[0]['rollout_gpus']:.1f})"
                   if r["max_staleness"] == 0 else "-")
        lines.append(f"| {r['rollout_gpus']} | {r['max_staleness']} | {r['iteration_s']:.2f} | {rollout} | "
                     f"{r['images_per_s']:.1f} | {r['driver_cpu_s']:.2f} ({100 * r['driver_cpu_share']:.1f}%) | "
                     f"{r['sync_s']:.2f} | {idle['rollout']:.2f}, {idle['reward']:.2f}, {idle['learner']:.2f} | "
                     + ", ".join(f"{cpu.get(k, 0):.2f}" for k in ("rollout", "reward", "learner", "ray")) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/meissonic-8gpu.yaml")
    parser.add_argument("--gpus", default="1,2,4,8,16,32,64")
    parser.add_argument("--staleness", default="0,1")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--plot", default="docs/simulation-scaling.png")
    parser.add_argument("--set", action="append", default=[], help="a config override on top, as the CLI takes")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    results = []
    for staleness in (int(s) for s in args.staleness.split(",")):
        for gpus in (int(g) for g in args.gpus.split(",")):
            results.append(measure(configure(args.config, gpus, staleness, args.set), args.warmup, args.iterations))
            print(json.dumps(results[-1]), flush=True)
    ray.shutdown()
    print(table(results))
    if args.plot:
        plot(results, Path(args.plot))


if __name__ == "__main__":
    main()
