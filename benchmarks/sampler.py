"""Sampler overhead: images/s, and the ratio of sampling time to the bare compute floor (steps x one batched
forward pass of the model on the same batch, with the guidance pass included when guidance is on).
Both are measured in this run, interleaved, median of repeats. `--device cuda --dtype bfloat16` measures what a
rollout worker does on a GPU (model on the device in bf16, trajectories and schedule on the CPU); each timing ends
with a device synchronise, so queued kernels are counted.

    .venv/bin/python benchmarks/sampler.py [--batch 64] [--steps 8] [--repeats 7] [--device cuda --dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cogrpo.models.checkpoint import build_model
from cogrpo.proto.config import load_config
from cogrpo.rollout.masked_image.family import hand_knobs
from cogrpo.rollout.masked.sampler import generate
from cogrpo.rollout.schedule import HandSchedule


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: CUDA kernels run asynchronously, so a timing must end here."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/smoke-cpu.yaml")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sampler", default="maskgit", choices=["maskgit", "emerge"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, help="CPU threads (default: the config's)")
    args = parser.parse_args()
    config = load_config(args.config)
    torch.set_num_threads(args.threads or config.threads)
    device = torch.device(args.device)
    model = build_model(config.model).eval().to(device, getattr(torch, args.dtype))
    prompts = ["a photo of a red circle and a blue square", "a photo of three triangles"] * (args.batch // 2 + 1)
    cond = model.encode_prompts(prompts[: args.batch])
    schedule = HandSchedule(hand_knobs(config.sampler, args.steps))
    guided = config.sampler.guidance > 0
    rows = 2 * args.batch if guided else args.batch
    floor_tokens = torch.randint(0, model.codebook_size, (rows, model.num_tokens)).to(device)
    floor_cond = (torch.cat([cond, model.null_conditioning(args.batch)]) if guided else cond).to(device)

    def sample() -> None:
        generate(model, cond, schedule, args.steps, seed=0, sampler=args.sampler)
        synchronize(device)

    @torch.no_grad()
    def floor() -> None:
        for _ in range(args.steps):
            model(floor_tokens, floor_cond)
        synchronize(device)

    sample(), floor()  # warm-up
    sample_s, floor_s = [], []
    for _ in range(args.repeats):
        for fn, times in ((sample, sample_s), (floor, floor_s)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    s, f = statistics.median(sample_s), statistics.median(floor_s)
    print(json.dumps({"sampler": args.sampler, "device": args.device, "dtype": args.dtype, "batch": args.batch,
                      "steps": args.steps, "guidance": guided,
                      "sample_s": round(s, 4), "floor_s": round(f, 4), "ratio": round(s / f, 3),
                      "images_per_s": round(args.batch / s, 1)}))


if __name__ == "__main__":
    main()
