"""The `cogrpo` command: sample, generate, eval, pretrain, train, config.

Bad input of any kind ends with one line on stderr and exit code 2; nothing half-written is left behind. A fault
training could not survive (a dead learner) ends with one line naming the last checkpoint and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cogrpo.proto.errors import FaultError, InputError, clip


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's default prints the usage block too)
        raise InputError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set sampler.steps=4 (repeatable)")


def _sampling(p: argparse.ArgumentParser, n_per_prompt: int | None | bool = False) -> None:
    """Options of the commands that sample; n_per_prompt=False leaves out --n-per-prompt."""
    p.add_argument("--checkpoint", help="model checkpoint: a .safetensors file or a run directory (its latest)")
    p.add_argument("--steps", type=int, help="decoding steps (default: from the config)")
    p.add_argument("--seed", type=int, help="sampling seed (default: the config seed)")
    p.add_argument("--schedule", metavar="hand|PATH",
                   help="decoding schedule: the hand schedule, or the learned one of a run directory or checkpoint "
                        "(default: the checkpoint's own learned schedule if it has one, else the hand schedule)")
    if n_per_prompt is not False:
        p.add_argument("--n-per-prompt", type=int, default=n_per_prompt, help="images per prompt")


def build_parser() -> argparse.ArgumentParser:
    from cogrpo import __version__

    parser = _Parser(prog="cogrpo", description="GRPO-family RL for diffusion models: Co-GRPO, MixGRPO, MaskGRPO")
    parser.add_argument("--version", action="version", version=f"cogrpo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("sample", help="images for one prompt, as a labelled grid PNG")
    _common(p)
    _sampling(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--n", type=int, default=16, help="number of images (the grid shows the first 64)")
    p.add_argument("--out", required=True, help="output PNG")

    p = sub.add_parser("generate", help="images for a metadata file, in GenEval's folder layout")
    _common(p)
    _sampling(p, 4)
    p.add_argument("--metadata", required=True, help="GenEval metadata JSONL")
    p.add_argument("--outdir", required=True)

    p = sub.add_parser("eval", help="GenEval-style scores of a model (--metadata) or of an image folder (--images)")
    _common(p)
    _sampling(p, None)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--metadata", help="GenEval metadata JSONL (default: the config's eval.metadata)")
    source.add_argument("--images", help="a GenEval-layout folder of generated images to score")
    p.add_argument("--results", help="also write one JSON line per image here")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("train", help="RL fine-tuning (Co-GRPO and its peers) on the configured prompts")
    _common(p)
    p.add_argument("--run-dir", help="run directory (default: train.run_dir, or runs/<time>-<mode>)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="continue the run in --run-dir: from its latest complete checkpoint (auto; none yet: start "
                        "over), or from PATH, one of its checkpoints/iter_NNNNNN folders")

    p = sub.add_parser("pretrain", help="train a tiny model (TinyMDM, TinyFlow) from scratch on the shapes world")
    _common(p)
    p.add_argument("--out", help="checkpoint path (default: pretrain.out from the config)")

    p = sub.add_parser("config", help="print the resolved config (defaults, the file, then --set) as YAML")
    _common(p)
    return parser


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


def _setup(args: argparse.Namespace):
    """Config, family, model, steps, seed and schedule shared by the sampling commands. A checkpoint saved by
    `cogrpo train` brings its learned schedule policy, used with its mean action; otherwise the hand schedule.
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
    config = _config(args)
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
    return config, family, model, steps, seed, schedule


def cmd_sample(args: argparse.Namespace) -> None:
    from cogrpo.data.grid import image_grid
    from cogrpo.data.prompts import parse_prompt
    from cogrpo.rewards.shapes import ShapesReward
    from cogrpo.rollout.collect import decode_prompts, join

    _positive("--n", args.n)
    if not args.out.lower().endswith(".png"):
        raise InputError(f"--out must be a .png file, got {args.out!r}")
    config, family, model, steps, seed, schedule = _setup(args)
    images = join(decode_prompts(family, model, schedule, [args.prompt] * args.n, steps, seed,
                                 config.sampler.batch_size)[0])
    try:
        record = parse_prompt(args.prompt)
        correct = [bool(j.strict) for j in ShapesReward().judge_batch(images, [record] * args.n)]
    except InputError:  # a free-form prompt (in the shapes vocabulary, or any for a real model): nothing to judge
        correct = [None] * args.n
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, [args.prompt] * args.n, correct).save(out)
    judged = [c for c in correct if c is not None]
    score = f", {sum(judged)}/{len(judged)} correct" if judged else ""
    print(f"wrote {out} ({args.n} images, {steps} steps{score})")


def cmd_generate(args: argparse.Namespace) -> None:
    from cogrpo.data.geneval import read_metadata, write_generation
    from cogrpo.rollout.batching import repeat_each
    from cogrpo.rollout.collect import decode_prompts, join

    records = read_metadata(args.metadata)
    outdir = Path(args.outdir)
    if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):
        raise InputError(f"output folder exists and is not empty: {outdir}")
    config, family, model, steps, seed, schedule = _setup(args)
    n = args.n_per_prompt
    prompts = repeat_each([r["prompt"] for r in records], n)
    flat = join(decode_prompts(family, model, schedule, prompts, steps, seed, config.sampler.batch_size)[0])
    write_generation(outdir, records, list(flat.reshape(len(records), n, *flat.shape[1:])))
    print(f"wrote {len(prompts)} images for {len(records)} prompts to {outdir}")


def cmd_eval(args: argparse.Namespace) -> None:
    import numpy as np

    from cogrpo.cluster.build import build_rewards
    from cogrpo.data.geneval import load_image, read_generation, read_metadata, resolve_metadata_path, write_jsonl
    from cogrpo.rewards.registry import mask_unscored, reward_stats, score_in_batches
    from cogrpo.rewards.shapes import geneval_summary, judge_generation
    from cogrpo.rollout.batching import repeat_each
    from cogrpo.rollout.collect import evaluate, join

    if args.images:
        for flag in ("checkpoint", "steps", "seed", "n_per_prompt"):
            if getattr(args, flag) is not None:
                raise InputError(f"--{flag.replace('_', '-')} does not apply to --images (they are already made)")
        config = _config(args)  # still validate the config and overrides
        folders = read_generation(args.images)
        records = [record for record, _ in folders]
        per_record = [np.stack([load_image(p) for p in paths]) for _, paths in folders]
        rows, judgements = judge_generation(records, per_record)
        result, samples = geneval_summary(rows, judgements), np.concatenate(per_record)
        metadata = [record for record, images in zip(records, per_record, strict=True) for _ in images]
    else:
        config, family, model, steps, seed, schedule = _setup(args)
        records = read_metadata(resolve_metadata_path(args.metadata or config.eval.metadata))
        n = args.n_per_prompt or config.eval.n_per_prompt
        start = time.time()
        evaluation = evaluate(family, model, schedule, records, steps, seed, config.sampler.batch_size, n)
        result, rows, samples = evaluation.summary, evaluation.rows, join(evaluation.batches)
        result.update(steps=steps, seconds=round(time.time() - start, 1))
        metadata = repeat_each(records, n)
    # the config's rewards too: GenEval's judge knows only the shapes world, a reward model any image
    terms = score_in_batches(build_rewards(config), samples, metadata, config.sampler.batch_size)
    result.update(reward_stats(config.rewards, mask_unscored(terms)))
    if args.results:
        write_jsonl(args.results, rows)
    if args.json:
        print(json.dumps(result))
    else:
        tasks = "  ".join(f"{k} {v:.3f}" for k, v in result["by_task"].items())
        rewards = "  ".join(f"{k[7:]} {v:.3f}" for k, v in result.items() if k.startswith("reward/"))
        print(f"overall {result['overall']:.3f}  strict {result['strict']:.3f}  partial {result['partial']:.3f}"
              f"  ({result['images']} images)\n{tasks}\nrewards: {rewards}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    import torch

    from cogrpo.cluster.build import family_of
    from cogrpo.cluster.process import configure_compute
    from cogrpo.data.geneval import read_metadata, resolve_metadata_path
    from cogrpo.learner.pretrain import pretrain
    from cogrpo.models.checkpoint import TINY_MODELS, save_model
    from cogrpo.rollout.collect import evaluate
    from cogrpo.rollout.schedule import HandSchedule

    config = _config(args)
    if config.model.kind not in TINY_MODELS:
        raise InputError(f"pretrain trains the tiny models ({', '.join(TINY_MODELS)}) from scratch, not "
                         f"model.kind {config.model.kind}")
    out = Path(args.out or config.pretrain.out)
    if out.suffix != ".safetensors":
        raise InputError(f"pretrain output must be a .safetensors file, got {str(out)!r}")
    records = read_metadata(resolve_metadata_path(config.eval.metadata))
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
    finally:
        if loop is not None:
            loop.close()
        if config.runtime == "ray":
            import ray

            ray.shutdown()
    kept = ("split", "steps", "overall", "strict", "partial")
    print(json.dumps({"final_eval": [{k: v for k, v in r.items() if k in kept or k.startswith("reward/")}
                                     for r in evals]}))


def cmd_config(args: argparse.Namespace) -> None:
    from cogrpo.proto.config import dump_config

    print(dump_config(_config(args)), end="")


COMMANDS = {"sample": cmd_sample, "generate": cmd_generate, "eval": cmd_eval, "pretrain": cmd_pretrain,
            "train": cmd_train, "config": cmd_config}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)
    except InputError as exc:
        print(f"cogrpo: error: {exc}", file=sys.stderr)
        return 2
    except FaultError as exc:
        print(f"cogrpo: fault: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
