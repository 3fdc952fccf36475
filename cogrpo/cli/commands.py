"""The commands behind `cogrpo`: each takes the parsed arguments, checks every input and output before any work, and
raises InputError (bad input) or FaultError (a fault the run could not survive) for the one line `main` prints."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cogrpo.proto.errors import InputError, Interrupted, clip
from cogrpo.proto.paths import output_file, output_folder


def _positive(name: str, value: int | None, high: int | None = None) -> None:
    if value is not None and value < 1:
        raise InputError(f"{name} must be at least 1, got {value}")
    if value is not None and high is not None and value > high:
        raise InputError(f"{name} must be at most {high}, got {clip(str(value))}")


def _config(args: argparse.Namespace):
    from cogrpo.proto.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "checkpoint", None):
        overrides.append(f"model.checkpoint={json.dumps(args.checkpoint)}")
    return load_config(args.config, overrides)


def _setup(args: argparse.Namespace, config):
    """Family, model, steps, seed and schedule of the sampling commands, for the config they loaded. A checkpoint
    saved by `cogrpo train` brings its learned schedule policy, used with its mean action; otherwise the hand schedule.
    --schedule pairs the model with another one (how much of a run's gain is its schedule, or its model)."""
    from cogrpo.cluster.build import build_policies
    from cogrpo.cluster.process import configure_compute
    from cogrpo.learner.checkpoint import load_policy_into, saved_policy_config
    from cogrpo.models.checkpoint import resolve_checkpoint_path
    from cogrpo.models.schedule_policy import PolicySchedule, SchedulePolicy
    from cogrpo.proto.config.base import MAX_STEPS, SEED_LIMIT
    from cogrpo.rollout.schedule import HandSchedule

    for name in ("steps", "n_per_prompt", "n"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name, None), MAX_STEPS if name == "steps" else None)
    if args.seed is not None and not 0 <= args.seed < SEED_LIMIT:
        raise InputError(f"--seed must be in [0, {SEED_LIMIT}), got {clip(str(args.seed))}")
    configure_compute(config.threads)
    steps = args.steps or config.eval.steps
    seed = config.seed if args.seed is None else args.seed
    policies = build_policies(config)
    family, model = policies.family, policies.model
    schedule, source = HandSchedule(family.hand_schedule(steps)), args.schedule or config.model.checkpoint
    if source is not None and source != "hand":
        folder = resolve_checkpoint_path(source).parent
        saved = saved_policy_config(folder)
        if saved is None and args.schedule:
            raise InputError(f"--schedule {source}: no learned schedule policy there")
        if saved is not None:
            policy = SchedulePolicy(saved, family.knobs, family.schedule_encoder(model, saved))
            load_policy_into(folder, policy)
            schedule = PolicySchedule(policy, family.hand_schedule(steps), sample_actions=False)
    return family, model, steps, seed, schedule


def _progress(total: int, samples: str):
    """A progress bar on stderr over the samples decoded; none when stderr is not a terminal (logs, CI, tests)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=samples.removesuffix("s"), disable=None, file=sys.stderr, dynamic_ncols=True)


def _prompt_file(args: argparse.Namespace, config) -> list[dict]:
    """The records of --tasks (a text model's) or --metadata (an image model's), else the config's eval.metadata."""
    from cogrpo.data.records import read_records

    texts = config.samples == "texts"
    for flag, for_texts in (("tasks", True), ("metadata", False)):
        if getattr(args, flag, None) is not None and for_texts != texts:
            raise InputError(f"--{flag} is for {'text' if for_texts else 'image'} models; this config's model makes "
                             f"{config.samples}")
    return read_records(args.tasks or args.metadata or config.eval.metadata, config.prompt_world)


def _check_out(path: str | None, flag: str, suffix: str, needed: bool) -> Path | None:
    """An output file's path, checked before any work: given when needed (and only then), with its suffix."""
    if path is None:
        if needed:
            raise InputError(f"{flag} is required for this model's samples")
        return None
    if not needed:
        raise InputError(f"{flag} does not apply to this model's samples")
    return output_file(path, flag, suffix)


def cmd_sample(args: argparse.Namespace) -> None:
    from cogrpo.data.grid import image_grid
    from cogrpo.data.prompts import check_prompt, parse_prompt
    from cogrpo.rewards.shapes import ShapesReward
    from cogrpo.rollout.collect import decode_prompts, join

    _positive("--n", args.n)
    config = _config(args)
    out = _check_out(args.out, "--out", ".png", config.samples == "images")
    world = config.prompt_world
    if world != "reasoning":
        check_prompt(args.prompt, world)
    family, model, steps, seed, schedule = _setup(args, config)
    samples = join(decode_prompts(family, model, schedule, [args.prompt] * args.n, steps, seed,
                                  config.sampler.batch_size)[0])
    if family.samples == "texts":
        print("\n".join(samples))
        return
    correct = [None] * args.n  # a free-form prompt, or a real model's: nothing the shapes judge can read
    try:
        if world == "shapes":
            record = parse_prompt(args.prompt)
            correct = [bool(j.strict) for j in ShapesReward().judge_batch(samples, [record] * args.n)]
    except InputError:  # in the shapes vocabulary, but none of its templates
        pass
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(samples, [args.prompt] * args.n, correct).save(out)
    judged = [c for c in correct if c is not None]
    score = f", {sum(judged)}/{len(judged)} correct" if judged else ""
    print(f"wrote {out} ({args.n} images, {steps} steps{score})")


def cmd_generate(args: argparse.Namespace) -> None:
    from cogrpo.data.geneval import write_generation, write_jsonl
    from cogrpo.rollout.batching import repeat_each
    from cogrpo.rollout.collect import decode_prompts, join

    config = _config(args)
    texts = config.samples == "texts"
    out = _check_out(args.out, "--out", ".jsonl", texts)
    outdir = output_folder(args.outdir, "--outdir") if args.outdir else None
    records = _prompt_file(args, config)
    family, model, steps, seed, schedule = _setup(args, config)
    n = args.n_per_prompt
    prompts = repeat_each([r["prompt"] for r in records], n)
    with _progress(len(prompts), config.samples) as bar:
        flat = join(decode_prompts(family, model, schedule, prompts, steps, seed, config.sampler.batch_size,
                                   bar.update)[0])
    if texts:
        write_jsonl(out, family.summarize(records, flat)[1])
        print(f"wrote {len(prompts)} completions for {len(records)} tasks to {out}")
        return
    write_generation(outdir, records, list(flat.reshape(len(records), n, *flat.shape[1:])))
    print(f"wrote {len(prompts)} images for {len(records)} prompts to {outdir}")


def cmd_eval(args: argparse.Namespace) -> None:
    import numpy as np

    from cogrpo.cluster.build import build_rewards
    from cogrpo.data.geneval import load_generation, read_generation, write_jsonl
    from cogrpo.rewards.registry import mask_unscored, reward_stats, score_in_batches
    from cogrpo.rewards.shapes import summarize_generation
    from cogrpo.rollout.batching import repeat_each
    from cogrpo.rollout.collect import evaluate, join

    results = output_file(args.results, "--results") if args.results else None
    if args.images:
        for flag in ("checkpoint", "steps", "seed", "n_per_prompt"):
            if getattr(args, flag) is not None:
                raise InputError(f"--{flag.replace('_', '-')} does not apply to --images (they are already made)")
    config = _config(args)
    if results is not None and config.prompt_world == "open":
        raise InputError("--results writes the shapes judge's verdicts, which a model with its own text encoder "
                         "has none of (GenEval's own scorer reads a `generate --outdir` folder)")
    if args.images:
        if config.samples != "images":
            raise InputError("--images scores an image folder: this config's model makes texts")
        folders = read_generation(args.images, config.prompt_world)
        records = [record for record, _ in folders]
        per_record = load_generation(folders)
        result, rows = summarize_generation(records, per_record, config.prompt_world)
        samples = np.concatenate(per_record)
        metadata = [record for record, images in zip(records, per_record, strict=True) for _ in images]
    else:
        records = _prompt_file(args, config)
        family, model, steps, seed, schedule = _setup(args, config)
        n = args.n_per_prompt or config.eval.n_per_prompt
        start = time.time()
        with _progress(len(records) * n, config.samples) as bar:
            evaluation = evaluate(family, model, schedule, records, steps, seed, config.sampler.batch_size, n,
                                  bar.update)
        result, rows, samples = evaluation.summary, evaluation.rows, join(evaluation.batches)
        result.update(steps=steps, seconds=round(time.time() - start, 1))
        metadata = repeat_each(records, n)
    # the config's rewards too: GenEval's judge knows only the shapes world, a reward model any image
    terms = score_in_batches(build_rewards(config), samples, metadata, config.sampler.batch_size)
    result.update(reward_stats(config.rewards, mask_unscored(terms)))
    if results is not None:
        write_jsonl(results, rows)
    if args.json:
        print(json.dumps(result))
        return
    tasks = "  ".join(f"{k} {v:.3f}" for k, v in result.get("by_task", {}).items())
    rewards = "  ".join(f"{k[7:]} {v:.3f}" for k, v in result.items() if k.startswith("reward/"))
    if "accuracy" in result:
        print(f"accuracy {result['accuracy']:.3f}  ({result['samples']} completions)\n{tasks}\nrewards: {rewards}")
    elif "overall" in result:
        print(f"overall {result['overall']:.3f}  strict {result['strict']:.3f}  partial {result['partial']:.3f}"
              f"  ({result['images']} images)\n{tasks}\nrewards: {rewards}")
    else:  # a real model's prompts: its rewards are the scores
        print(f"{result['images']} images\nrewards: {rewards}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    import torch

    from cogrpo.cluster.build import family_of
    from cogrpo.cluster.process import configure_compute
    from cogrpo.data.records import read_records
    from cogrpo.learner.pretrain import pretrain
    from cogrpo.models.checkpoint import TINY_MODELS, save_model
    from cogrpo.rollout.collect import evaluate
    from cogrpo.rollout.schedule import HandSchedule

    config = _config(args)
    if config.model.kind not in TINY_MODELS:
        raise InputError(f"pretrain trains the tiny models ({', '.join(TINY_MODELS)}) from scratch, not "
                         f"model.kind {config.model.kind}")
    out = output_file(args.out or config.pretrain.out, "--out (pretrain.out)", ".safetensors")
    records = read_records(config.eval.metadata, config.prompt_world)
    configure_compute(config.threads)
    torch.manual_seed(config.seed)
    model = TINY_MODELS[config.model.kind](config.model.arch)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"pretraining {type(model).__name__} ({n_params / 1e6:.2f}M parameters) for {config.pretrain.steps} steps",
          flush=True)
    stats = pretrain(model, config.pretrain, config.seed, log=lambda row: print(json.dumps(row), flush=True))
    save_model(model, out, pretrain=json.dumps(stats))
    family, steps = family_of(config), config.eval.steps
    result = evaluate(family, model, HandSchedule(family.hand_schedule(steps)), records, steps, config.seed,
                      config.sampler.batch_size, config.eval.n_per_prompt).summary
    print(json.dumps({"checkpoint": str(out), **stats, "eval": result}))


def cmd_train(args: argparse.Namespace) -> None:
    from cogrpo.cluster.loop import trainer

    config = _config(args)
    loop = None
    try:
        loop = trainer(config, args.run_dir, resume=args.resume)
        evals = loop.fit()
    except KeyboardInterrupt:
        where = (f"the last complete checkpoint is {loop.last_checkpoint}: continue with --resume auto"
                 if loop is not None and loop.last_checkpoint else "no checkpoint was written")
        raise Interrupted(f"interrupted; {where}") from None
    finally:
        if loop is not None:
            loop.close()
        if config.runtime == "ray":
            import ray

            ray.shutdown()
    kept = ("split", "steps", "overall", "strict", "partial", "accuracy")
    print(json.dumps({"final_eval": [{k: v for k, v in r.items() if k in kept or k.startswith("reward/")}
                                     for r in evals]}))


def cmd_config(args: argparse.Namespace) -> None:
    from cogrpo.proto.config import dump_config

    print(dump_config(_config(args)), end="")
