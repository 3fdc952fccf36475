"""Which samples a step plan makes before any training: the shipped model's rollouts (hand schedule, the training
split's prompts, the config's rewards) under every step plan the trainer can draw, each window position of a
MixGRPO window with the steps outside it decoded deterministically (greedily) or stochastically. A plan whose
rollouts score far from the evaluation's (every step sampled) trains on samples the evaluation never sees. Prints a
markdown table.

    .venv/bin/python benchmarks/step_plans.py [--prompts 64] [--samples 8] [--window 4]
"""

from __future__ import annotations

import argparse

from cogrpo.cluster.build import build_policies, build_rewards
from cogrpo.cluster.process import configure_compute
from cogrpo.data.prompts import training_records
from cogrpo.proto.config import load_config
from cogrpo.rewards.registry import score_in_batches
from cogrpo.rollout.batching import repeat_each
from cogrpo.rollout.collect import collect
from cogrpo.rollout.schedule import HandSchedule
from cogrpo.rollout.steps import step_plan


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/smoke-cpu.yaml")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt")
    parser.add_argument("--window", type=int, default=4)
    args = parser.parse_args()
    config = load_config(args.config)
    configure_compute(config.threads)
    policies = build_policies(config)
    family, model, steps = policies.family, policies.model, config.sampler.steps
    rewards = build_rewards(config)
    records = training_records(config.seed, 0, args.prompts)
    schedule = HandSchedule(family.hand_schedule(steps))
    plans = [("every step sampled (as evaluated)", load_config(args.config).algo.steps)]
    for outside in ("deterministic", "stochastic"):
        for start in range(0, steps - args.window + 1, max(1, (steps - args.window) // 2)):
            window = load_config(args.config, ["algo.steps.mode=window", f"algo.steps.window={args.window}",
                                               "algo.steps.shift_every=1", f"algo.steps.stride={start}",
                                               f"algo.steps.outside={outside}"]).algo.steps
            plans.append((f"window at steps {start}-{start + args.window - 1}, {outside} outside", window))
    names = [r.name for r in config.rewards]
    print(f"`.venv/bin/python benchmarks/step_plans.py --prompts {args.prompts} --samples {args.samples} "
          f"--window {args.window}`\n")
    print("| plan | " + " | ".join(names) + " |")
    print("| --- | " + " | ".join("---" for _ in names) + " |")
    for label, subset in plans:
        plan = step_plan(subset, steps, 1, config.seed)  # iteration 1: the window at `stride`
        traj = collect(family, model, schedule, [r["prompt"] for r in records], args.samples, plan, config.seed, 0,
                       config.sampler.batch_size)
        terms = score_in_batches(rewards, family.decode(model, traj), repeat_each(records, args.samples),
                                 config.sampler.batch_size)
        print(f"| {label} | " + " | ".join(f"{scores[valid].mean():.3f}" for scores, valid, _ in terms) + " |",
              flush=True)


if __name__ == "__main__":
    main()
