"""Weight-sync cost: learner -> rollout worker through the real Ray runtime (its weight channel's publish, the path
every iteration takes), for TinyMDM widened to ~10M and ~100M parameters, over both CPU transports. Two floors, each
measured in the same run, interleaved with the publishes (one of each per repeat, medians): a plain memory copy of
the same bytes (every tensor of the message into a preallocated twin), and for the collective transport a bare gloo
broadcast of the same bytes between two other processes (one tensor: no header, no buckets, no copies).

A run publishes every iteration, so the medians are of publishes after a warm-up (`--warmup` publishes and at least
10 s): the first publishes put their messages into object-store memory that no process has touched yet, which costs
page faults; the first publish's time is reported as `first_s`. Each message lands wherever the store has room, and
every region of the store a process has not touched yet costs one such cold publish, so the store is capped at two
100M messages' worth (`--object-store-mb 1024`): the warm-up touches all of it, as a long run does any store.

    .venv/bin/python benchmarks/weight_sync.py [--sizes 10M,100M] [--repeats 7] [--warmup 8] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time

import ray
import torch

from cogrpo.cluster.build import build_policies
from cogrpo.cluster.compat import process_group
from cogrpo.cluster.loop import trainer
from cogrpo.cluster.process import configure_compute
from cogrpo.cluster.ray.weights import connect_store, host_store, named_state
from cogrpo.proto.config import load_config

# TinyMDM widths and depths that land near the named sizes (12 d^2 per block dominates).
SIZES = {"10M": ["model.arch.d_model=384", "model.arch.layers=5", "model.arch.heads=6", "model.arch.conv_layers=1"],
         "100M": ["model.arch.d_model=1024", "model.arch.layers=8", "model.arch.heads=16",
                  "model.arch.conv_layers=1"]}
TRANSPORTS = ("collective", "object_store")


@ray.remote(num_cpus=0)
class BarePeer:
    """One end of a bare gloo broadcast of `nbytes` in one tensor."""

    def __init__(self, nbytes: int, threads: int):
        configure_compute(threads)
        self.flat, self.ip = torch.ones(nbytes // 4), ray.util.get_node_ip_address()

    def host(self) -> tuple[str, int]:
        self.store = host_store(self.ip, 120)
        return self.ip, self.store.port

    def join(self, host: str, port: int, rank: int) -> None:
        store = self.store if rank == 0 else connect_store(host, port, 120)
        self.group = process_group(store, rank, 2, self.ip, 120, cuda=False)

    def broadcast(self) -> None:
        self.group.broadcast(self.flat, 0).wait()


def bare_pair(nbytes: int, threads: int) -> list:
    peers = [BarePeer.remote(nbytes, threads) for _ in range(2)]
    host, port = ray.get(peers[0].host.remote())
    ray.get([p.join.remote(host, port, rank) for rank, p in enumerate(peers)])
    return peers


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(size: str, transport: str, args, common: list[str]) -> dict:
    """One transport at one size: (publish, copy floor[, bare broadcast]) per repeat, after the warm-up."""
    config = load_config(args.config, common + SIZES[size] + [f"cluster.weight_sync={transport}"])
    configure_compute(config.threads)
    policies = build_policies(config)
    state = named_state(policies.model, policies.policy)
    twins = {k: torch.empty_like(v) for k, v in state.items()}
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    runtime = trainer(config, tempfile.mkdtemp(prefix="bench-sync-"), log=lambda line: None).runtime
    peers = bare_pair(nbytes, config.threads) if transport == "collective" else None
    first, started = runtime.weights.publish(0), time.perf_counter()
    for i in itertools.count():  # --warmup publishes, and 10 s for the new cluster's own start-up work to settle
        if i >= args.warmup and time.perf_counter() - started > 10:
            break
        runtime.weights.publish(0)
    times: dict[str, list[float]] = {"sync": [], "copy": [], "bare": []}
    for _ in range(args.repeats):
        times["copy"].append(timed(lambda: [twins[k].copy_(v) for k, v in state.items()]))
        if peers:
            times["bare"].append(timed(lambda: ray.get([p.broadcast.remote() for p in peers])))
        times["sync"].append(runtime.weights.publish(0))
    runtime.close()
    for peer in peers or ():
        ray.kill(peer)
    sync, copy = statistics.median(times["sync"]), statistics.median(times["copy"])
    row = {"size": size, "params": sum(p.numel() for p in policies.model.parameters()), "MB": round(nbytes / 2**20, 1),
           "transport": transport, "sync_s": round(sync, 4), "first_s": round(first, 3), "copy_s": round(copy, 4),
           "ratio": round(sync / copy, 2), "GB_per_s": round(nbytes / 2**30 / sync, 2)}
    if peers:
        bare = statistics.median(times["bare"])
        row.update(bare_s=round(bare, 4), ratio_bare=round(sync / bare, 2))
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/smoke-cpu.yaml")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--object-store-mb", type=int, default=1024, help="two 100M messages' worth: see above")
    parser.add_argument("--json", action="store_true", help="end with one JSON line: transport -> size -> row")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    common = ["runtime=ray", "model.checkpoint=null", "train.eval_at_start=false",
              f"cluster.object_store_mb={args.object_store_mb}",
              "cluster.rollout_cpus=0.5", "cluster.learner_cpus=0.5"]
    rows = []
    for size in args.sizes.split(","):
        for transport in args.transports.split(","):
            rows.append(measure(size, transport, args, common))
            print(json.dumps(rows[-1]), flush=True)
    ray.shutdown()
    print("\n| size | params | MB | transport | sync s | first s | copy s | ratio | bare gloo s | ratio to bare |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['size']} | {r['params']:,} | {r['MB']} | {r['transport']} | {r['sync_s']} | {r['first_s']} "
              f"| {r['copy_s']} | {r['ratio']} | {r.get('bare_s', '-')} | {r.get('ratio_bare', '-')} |")
    if args.json:
        out: dict[str, dict] = {}
        for r in rows:
            out.setdefault(r["transport"], {})[r["size"]] = r
        print(json.dumps(out))


if __name__ == "__main__":
    main()
