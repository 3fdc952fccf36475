"""Weight-sync cost: learner -> rollout workers through the real Ray runtime (its weight channel's publish, the
path every iteration takes), for TinyMDM widened to ~10M and ~100M parameters, over both transports. The floor
is a plain memory copy of the same bytes (every tensor of the published message into a preallocated twin), so
the ratio says what the transport costs beyond touching the bytes once. Floor and syncs come from the same run.

    .venv/bin/python benchmarks/weight_sync.py [--sizes 10M,100M] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import ray
import torch

from cogrpo.cluster.build import build_policies
from cogrpo.cluster.loop import trainer
from cogrpo.cluster.ray.weights import named_state
from cogrpo.proto.config import load_config

# TinyMDM widths and depths that land near the named sizes (12 d^2 per block dominates).
SIZES = {"10M": ["model.arch.d_model=384", "model.arch.layers=5", "model.arch.heads=6", "model.arch.conv_layers=1"],
         "100M": ["model.arch.d_model=1024", "model.arch.layers=8", "model.arch.heads=16",
                  "model.arch.conv_layers=1"]}
TRANSPORTS = ("collective", "object_store")


def copy_floor(state: dict[str, torch.Tensor], repeats: int) -> float:
    """Median seconds to copy every tensor into a preallocated twin."""
    twins = {k: torch.empty_like(v) for k, v in state.items()}
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for k, v in state.items():
            twins[k].copy_(v)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/smoke-cpu.yaml")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    common = ["runtime=ray", "model.checkpoint=null", "train.eval_at_start=false", "cluster.object_store_mb=3072",
              "cluster.rollout_cpus=0.5", "cluster.learner_cpus=0.5"]
    rows = []
    for size in args.sizes.split(","):
        config = load_config(args.config, common + SIZES[size])
        policies = build_policies(config)
        state = named_state(policies.model, policies.policy)
        params = sum(p.numel() for p in policies.model.parameters())
        megabytes = sum(v.numel() * v.element_size() for v in state.values()) / 2**20
        floor = copy_floor(state, args.repeats)
        del policies, state
        for transport in TRANSPORTS:
            run = load_config(args.config, common + SIZES[size] + [f"cluster.weight_sync={transport}"])
            channel = trainer(run, tempfile.mkdtemp(prefix="bench-sync-"), log=lambda line: None).runtime
            channel.weights.publish(0)  # warm-up
            sync = statistics.median(channel.weights.publish(0) for _ in range(args.repeats))
            channel.close()
            row = {"size": size, "params": params, "MB": round(megabytes, 1), "transport": transport,
                   "sync_s": round(sync, 4), "copy_floor_s": round(floor, 4), "ratio": round(sync / floor, 1),
                   "GB_per_s": round(megabytes / 1024 / sync, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    ray.shutdown()
    print("\n| size | params | MB | transport | sync s | copy floor s | ratio | GB/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['size']} | {r['params']:,} | {r['MB']} | {r['transport']} | {r['sync_s']} | {r['copy_floor_s']} "
              f"| {r['ratio']} | {r['GB_per_s']} |")


if __name__ == "__main__":
    main()
