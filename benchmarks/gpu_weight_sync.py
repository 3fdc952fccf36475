"""Weight sync between two processes at a given size: the project's broadcast transport (`BroadcastGroup` of
cogrpo/cluster/ray/weights.py, the `collective` weight sync's bucketed broadcast, without Ray around it) moving a
widened TinyMDM's named state, against a copy of the same bytes into preallocated twins on the receiver's device.

`--device cuda`: NCCL between GPUs 0 and 1, the model in bf16 (what the learner publishes under DeepSpeed's bf16),
the floor a device-to-device copy (GPU 0 -> GPU 1). NCCL refuses two ranks on one GPU, so this needs two GPUs.
`--device cpu`: gloo between two processes, float32, the floor a plain memory copy. Every repeat starts both ranks
together and counts until both hold the weights; the receiver starts zeroed and must end equal to the sender.
Prints one JSON line; exit 1 if the received weights differ.

    .venv/bin/python benchmarks/gpu_weight_sync.py --device cuda --params 1e9 [--repeats 5]
    .venv/bin/python benchmarks/gpu_weight_sync.py --device cpu --params 5e6
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import statistics
import sys
import time

import torch
import torch.multiprocessing as mp

from cogrpo.cluster.build import build_policies
from cogrpo.cluster.ray.weights import BroadcastGroup, connect_store, host_store, named_state
from cogrpo.proto.config import load_config

HOST = "127.0.0.1"
LAYERS = 16
HEAD_DIM = 64
TIMEOUT_S = 300.0


def arch_for(params: float) -> list[str]:
    """TinyMDM overrides near `params` parameters: 16 blocks of ~12 d^2 each, d a multiple of the head width."""
    d = max(1, round(math.sqrt(params / (12 * LAYERS)) / HEAD_DIM)) * HEAD_DIM
    return ["model.checkpoint=null", f"model.arch.d_model={d}", f"model.arch.layers={LAYERS}",
            f"model.arch.heads={d // HEAD_DIM}", "model.arch.conv_layers=1"]


def synchronize() -> None:
    if torch.cuda.is_available():
        for device in range(torch.cuda.device_count()):
            torch.cuda.synchronize(device)


def build_state(args, device: torch.device) -> dict[str, torch.Tensor]:
    """The named state built straight on `device` (a 1B model is not initialised on the CPU first)."""
    config = load_config(args.config, arch_for(args.params))
    with torch.device(device):
        policies = build_policies(config)
    if device.type == "cuda":
        policies.model.to(torch.bfloat16)
    return named_state(policies.model, policies.policy)


def copy_floor(state: dict[str, torch.Tensor], device: torch.device, repeats: int) -> float:
    """Median seconds to copy every tensor into a preallocated twin on `device`, until the copies have landed."""
    twins = {k: torch.empty_like(v, device=device) for k, v in state.items()}
    times = []
    for _ in range(repeats + 1):
        synchronize()
        start = time.perf_counter()
        for k, v in state.items():
            twins[k].copy_(v)
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def barrier(store, key: str, world: int) -> None:
    """Every rank has reached `key` (the store's counter), so a repeat's clock starts on both sides together."""
    store.add(key, 1)
    while store.add(key, 0) < world:
        time.sleep(1e-4)


def checksum(state: dict[str, torch.Tensor]) -> float:
    return sum(float(v.double().sum()) for v in state.values())


def rank_main(rank: int, args, port: int, results) -> None:
    """One side of the broadcast: rank 0 sends (and measures the copy floor), rank 1 receives."""
    torch.set_num_threads(1)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    state = build_state(args, device)
    floor = None
    if rank == 0:
        floor = copy_floor(state, torch.device("cuda:1" if cuda else "cpu"), args.repeats)
    else:
        for v in state.values():
            v.zero_()
    store = connect_store(HOST, port, TIMEOUT_S)
    group = BroadcastGroup(store, rank, 2, HOST, TIMEOUT_S)
    times = []
    for repeat in range(args.repeats + 1):  # the first is a warm-up (NCCL sets up its channels there)
        barrier(store, f"repeat{repeat}", 2)
        start = time.perf_counter()
        if rank == 0:
            group.send(repeat, state)
        else:
            group.receive(state)
        synchronize()
        times.append(time.perf_counter() - start)
    params = sum(v.numel() for k, v in state.items() if k.startswith("model."))
    megabytes = sum(v.numel() * v.element_size() for v in state.values()) / 2**20
    results.put((rank, {"times": times[1:], "floor": floor, "checksum": checksum(state), "params": params,
                        "MB": megabytes, "dtype": str(next(iter(state.values())).dtype)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/smoke-cpu.yaml")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--params", type=float, default=1e9, help="model parameters, roughly")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        sys.exit(f"NCCL needs two GPUs (it refuses two ranks on one); this machine has {torch.cuda.device_count()}")
    store = host_store(HOST, TIMEOUT_S)  # the rendezvous both ranks join, held by this process
    context = mp.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=rank_main, args=(rank, args, store.port, results)) for rank in range(2)]
    for process in ranks:
        process.start()
    out = {}
    while len(out) < len(ranks):
        try:
            rank, result = results.get(timeout=1.0)
            out[rank] = result
        except queue.Empty:
            dead = [rank for rank, process in enumerate(ranks) if process.exitcode not in (None, 0)]
            if dead:  # the other rank would wait for its peer until the group's timeout
                for process in ranks:
                    process.kill()
                sys.exit(f"rank {dead[0]} died (exit code {ranks[dead[0]].exitcode}): see its traceback above")
    for process in ranks:
        process.join()
    sync = statistics.median(max(pair) for pair in zip(out[0]["times"], out[1]["times"]))
    floor, sent = out[0]["floor"], out[0]
    match = math.isclose(out[0]["checksum"], out[1]["checksum"], rel_tol=1e-9, abs_tol=1e-9)
    print(json.dumps({"transport": "nccl" if args.device == "cuda" else "gloo", "params": sent["params"],
                      "dtype": sent["dtype"], "MB": round(sent["MB"], 1), "sync_s": round(sync, 4),
                      "copy_floor_s": round(floor, 4), "ratio": round(sync / floor, 2),
                      "GB_per_s": round(sent["MB"] / 1024 / sync, 2), "match": match}), flush=True)
    sys.exit(0 if match else 1)


if __name__ == "__main__":
    main()
