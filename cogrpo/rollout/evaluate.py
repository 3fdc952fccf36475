"""GenEval-style evaluation: generate images for metadata records, judge them, summarise per task."""

from __future__ import annotations

import numpy as np
import torch

from cogrpo.data.geneval import summarize
from cogrpo.models.interface import MaskedTokenModel
from cogrpo.rewards.shapes import Judgement, ShapesReward
from cogrpo.rollout.collect import repeat_each
from cogrpo.rollout.sampler import generate
from cogrpo.rollout.schedule import Schedule


def generate_images(model: MaskedTokenModel, prompts: list[str], schedule: Schedule, steps: int, seed: int,
                    batch_size: int, sampler: str = "maskgit") -> np.ndarray:
    """uint8 RGB (len(prompts), H, W, 3); batch i uses seed + i, so results do not depend on anything else."""
    images = []
    for i, start in enumerate(range(0, len(prompts), batch_size)):
        cond = model.encode_prompts(prompts[start: start + batch_size])
        traj = generate(model, cond, schedule, steps, seed + i, sampler=sampler)
        images.append(model.decode_images(traj.tokens))
    return np.concatenate(images)


def judge_images(records: list[dict], images: list[np.ndarray]) -> tuple[list[dict], list[Judgement]]:
    """GenEval result rows (tag, prompt, correct, reason) for images[i] = the samples of records[i]."""
    rows, judgements = [], []
    reward = ShapesReward()
    for index, (record, samples) in enumerate(zip(records, images, strict=True)):
        for n, j in enumerate(reward.judge_batch(samples, [record] * len(samples))):
            rows.append({"filename": f"{index:05d}/samples/{n:05d}.png", "tag": record["tag"],
                         "prompt": record["prompt"], "correct": bool(j.strict), "reason": j.reason})
            judgements.append(j)
    return rows, judgements


def summary(rows: list[dict], judgements: list[Judgement]) -> dict:
    return {**summarize(rows), "strict": float(np.mean([j.strict for j in judgements])),
            "partial": float(np.mean([j.partial for j in judgements])), "images": len(rows)}


def evaluate(model: MaskedTokenModel, records: list[dict], schedule: Schedule, steps: int, seed: int,
             batch_size: int, n_per_prompt: int = 1, sampler: str = "maskgit") -> tuple[dict, list[dict], np.ndarray]:
    """(summary with overall/strict/partial/by_task, result rows, images (len(records), n, H, W, 3))."""
    prompts = repeat_each([r["prompt"] for r in records], n_per_prompt)
    with torch.no_grad():
        flat = generate_images(model, prompts, schedule, steps, seed, batch_size, sampler)
    images = flat.reshape(len(records), n_per_prompt, *flat.shape[1:])
    rows, judgements = judge_images(records, list(images))
    return summary(rows, judgements), rows, images
