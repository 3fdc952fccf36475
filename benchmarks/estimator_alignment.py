"""How well does the MaskGRPO likelihood estimator point where the policy gradient points? On fresh rollout
batches of the shipped model, the cosine between the gradient of the exact trajectory objective (the committed
tokens' log-probs replayed step by step: the policy gradient at theta = theta_old) and the gradient of the MaskGRPO
objective at each re-mask rate, same advantages. Near 1: a faithful proxy; near 0: noise the update follows.

    .venv/bin/python benchmarks/estimator_alignment.py [--batches 4] [--sampler maskgit]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from cogrpo.cluster.build import build_policies, build_rewards
from cogrpo.data.prompts import training_records
from cogrpo.learner.advantages import group_advantages, group_ids
from cogrpo.learner.objectives import theta_objective
from cogrpo.proto.config import load_config
from cogrpo.rewards.registry import score_all
from cogrpo.rollout.collect import collect
from cogrpo.rollout.masked.estimators import MaskGRPO, TrajectoryReplay, random_mask
from cogrpo.rollout.schedule import schedule_for
from cogrpo.rollout.steps import step_plan

RATES = (0.5, 0.8, 0.9, 0.999)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/smoke-cpu.yaml")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--sampler", default="maskgit", choices=["maskgit", "emerge"])
    args = parser.parse_args()
    config = load_config(args.config, ["algo.mode=grpo", f"sampler.kind={args.sampler}"])
    torch.set_num_threads(config.threads)
    algo, steps = config.algo, config.sampler.steps
    policies = build_policies(config)
    family, model = policies.family, policies.model
    schedule = schedule_for(config, family, policies.policy, steps, True)
    rewards = build_rewards(config)
    replay, maskgrpo = TrajectoryReplay(), MaskGRPO(algo)

    def gradient(loss: torch.Tensor) -> torch.Tensor:
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    cosines: dict[float, list[float]] = {rate: [] for rate in RATES}
    for batch in range(args.batches):
        records = training_records(config.seed, batch, algo.prompts_per_iteration, None)
        plan = step_plan(algo.steps, steps, batch, config.seed)
        traj = collect(family, model, schedule, [r["prompt"] for r in records], algo.group_size, plan, config.seed,
                       batch, config.sampler.batch_size)
        metadata = [r for r in records for _ in range(algo.group_size)]
        terms = score_all(rewards, family.decode(model, traj), [r["prompt"] for r in metadata], metadata)
        adv, _ = group_advantages(terms, group_ids(len(records), algo.group_size), algo.adv_eps, None)
        adv = torch.from_numpy(adv).float()
        scored, behaviour = replay.log_probs(model, traj, plan.trained, {}), replay.behaviour(traj, plan.trained)
        exact = gradient(theta_objective(scored.logp, scored.mask, behaviour, behaviour, adv, algo)[0])
        for rate in RATES:
            view = {"masked": random_mask(tuple(traj.tensors["tokens"].shape), rate, traj.seed * 1009)}
            with torch.no_grad():
                old = maskgrpo.log_probs(model, traj, [], view).logp
            proxy_scored = maskgrpo.log_probs(model, traj, [], view)
            proxy = gradient(theta_objective(proxy_scored.logp, proxy_scored.mask, old, None, adv, algo)[0])
            cosines[rate].append(torch.nn.functional.cosine_similarity(exact, proxy, 0).item())
    for rate, values in cosines.items():
        print(json.dumps({"sampler": args.sampler, "rate": rate, "cosine_mean": round(statistics.mean(values), 3),
                          "cosine_min": round(min(values), 3), "cosine_max": round(max(values), 3)}))


if __name__ == "__main__":
    main()
