"""Stale samples under `ratio: step_product`: how far the behaviour -> old importance weight of a step (capped exp of
the step's summed log-ratio: one ratio per step, as the objective has) lies from a mean of per-token capped weights.
One-step-off as the trainer runs it: each iteration's batch is sampled by the weights before the update that
precedes its own, so after every theta update the next batch is one version stale. Prints one JSON line per update
and a summary.

    .venv/bin/python benchmarks/stale_weights.py [--updates 5]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from cogrpo.cluster.build import build_learner, build_policies
from cogrpo.cluster.process import configure_compute
from cogrpo.data.prompts import training_records
from cogrpo.learner.learner import ScoredBatch
from cogrpo.proto.config import load_config
from cogrpo.rollout.collect import collect
from cogrpo.rollout.masked.estimators import TrajectoryReplay
from cogrpo.rollout.schedule import rollout_schedule
from cogrpo.rollout.steps import full_plan


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/smoke-cpu.yaml")
    parser.add_argument("--updates", type=int, default=5)
    args = parser.parse_args()
    config = load_config(args.config, ["algo.mode=grpo", "algo.ratio=step_product", "algo.kl_beta=0"])
    configure_compute(config.threads)
    policies = build_policies(config)
    family, model, algo = policies.family, policies.model, config.algo
    learner, replay = build_learner(config, policies), TrajectoryReplay()
    steps = list(range(config.sampler.steps))

    def batch(iteration: int):
        prompts = [r["prompt"] for r in training_records(config.seed, iteration, algo.prompts_per_iteration)]
        return collect(family, model, rollout_schedule(config, family, policies.policy, iteration), prompts,
                       algo.group_size, full_plan(config.sampler.steps), config.seed, iteration,
                       config.sampler.batch_size)

    product, token_mean, apart, capped = [], [], [], []
    upcoming = batch(0)
    for iteration in range(args.updates):
        traj, upcoming = upcoming, batch(iteration + 1)  # the next batch is sampled before this update
        adv = torch.randn(traj.batch_size, generator=torch.Generator().manual_seed(iteration))
        trained = torch.ones(traj.batch_size, len(steps), dtype=torch.bool)
        learner.update(ScoredBatch(traj, adv, torch.ones(traj.batch_size, dtype=torch.bool), trained), iteration)
        with torch.no_grad():  # the next batch, now one version behind: its old (current) and behaviour log-probs
            old = replay.log_probs(model, upcoming, steps, {})
        behaviour, mask = replay.behaviour(upcoming, steps), old.mask
        has = mask.any(-1)
        per_step = torch.exp(((old.logp - behaviour) * mask).sum(-1)).clamp(max=algo.is_cap)[has]
        per_token = ((torch.exp(old.logp - behaviour).clamp(max=algo.is_cap) * mask).sum(-1) / mask.sum(-1))[has]
        product += per_step.tolist()
        token_mean += per_token.tolist()
        apart.append(float(((per_step - per_token).abs() > 0.1 * per_step).float().mean()))
        capped.append(float((per_step >= algo.is_cap).float().mean()))
        print(json.dumps({"update": iteration + 1, "product_mean": round(per_step.mean().item(), 3),
                          "product_range": [round(per_step.min().item(), 3), round(per_step.max().item(), 3)],
                          "token_mean_mean": round(per_token.mean().item(), 3),
                          "token_mean_range": [round(per_token.min().item(), 3), round(per_token.max().item(), 3)],
                          "steps_apart_by_10pct": round(apart[-1], 3), "steps_capped": round(capped[-1], 3)}),
              flush=True)
    print(json.dumps({"steps": len(product), "product_median": round(statistics.median(product), 3),
                      "token_mean_median": round(statistics.median(token_mean), 3),
                      "steps_apart_by_10pct": round(statistics.mean(apart), 3),
                      "steps_capped": round(statistics.mean(capped), 3)}))


if __name__ == "__main__":
    main()
