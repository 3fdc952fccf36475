"""Headroom: how far RL could lift the shipped model before it has to learn anything new. Per task, the mean
accuracy of one sample (what the held-out score measures) against best-of-n (the share of prompts for which at
least one of n samples with the hand schedule is judged correct), with GenEval's overall (mean over tasks) of
each. Prints a markdown table.

    .venv/bin/python benchmarks/headroom.py [--n 8] [--prompts 400] [--splits heldout,train]
"""

from __future__ import annotations

import argparse

import numpy as np

from cogrpo.cluster.build import build_policies
from cogrpo.cluster.process import configure_compute
from cogrpo.data.geneval import read_metadata, resolve_metadata_path, summarize
from cogrpo.data.prompts import TASKS
from cogrpo.proto.config import load_config
from cogrpo.rollout.collect import evaluate
from cogrpo.rollout.schedule import schedule_for


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/smoke-cpu.yaml")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--prompts", type=int, default=400, help="the first N records of each split")
    parser.add_argument("--splits", default="heldout,train")
    args = parser.parse_args()
    config = load_config(args.config, [])
    configure_compute(config.threads)
    policies = build_policies(config)
    schedule = schedule_for(config, policies.family, policies.policy, config.sampler.steps, sample_actions=False)
    print(f"`.venv/bin/python benchmarks/headroom.py --n {args.n} --prompts {args.prompts} --splits {args.splits}`\n")
    print("| split | measure | overall | " + " | ".join(TASKS) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in TASKS) + " |")
    for split in args.splits.split(","):
        records = read_metadata(resolve_metadata_path(f"builtin:{split}"), "shapes")[: args.prompts]
        rows = evaluate(policies.family, policies.model, schedule, records, config.sampler.steps, config.seed,
                        config.sampler.batch_size, args.n).rows
        correct = np.array([row["correct"] for row in rows]).reshape(len(records), args.n)
        one = summarize([{"tag": r["tag"], "correct": c} for r, c in zip(records, correct.mean(1))])
        best = summarize([{"tag": r["tag"], "correct": c} for r, c in zip(records, correct.any(1))])
        for measure, summary in (("one sample", one), (f"best of {args.n}", best)):
            cells = " | ".join(f"{summary['by_task'][t]:.2f}" if t in summary["by_task"] else "" for t in TASKS)
            print(f"| {split} | {measure} | {summary['overall']:.3f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
