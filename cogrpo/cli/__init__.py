"""The `cogrpo` command: sample, generate, eval, pretrain, train, export, config.

Bad input of any kind ends with one line on stderr and exit code 2; nothing half-written is left behind. A fault
training could not survive (a dead learner) ends with one line naming the last checkpoint and exit code 1; Ctrl-C
with one line naming it and exit code 130.
"""

from __future__ import annotations

import argparse
import sys

from cogrpo.cli.commands import cmd_config, cmd_eval, cmd_generate, cmd_pretrain, cmd_sample, cmd_train
from cogrpo.cli.export import cmd_export
from cogrpo.proto.errors import FaultError, InputError, Interrupted


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's default prints the usage block too)
        raise InputError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (default: built-in defaults)")
    _overrides(p)


def _overrides(p: argparse.ArgumentParser) -> None:
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

    p = sub.add_parser("sample", help="samples for one prompt: images as a labelled grid PNG, texts printed")
    _common(p)
    _sampling(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--n", type=int, default=16, help="number of samples (an image grid shows the first 64)")
    p.add_argument("--out", help="output PNG (image models)")

    p = sub.add_parser("generate", help="images for a metadata file in GenEval's folder layout (--outdir), or "
                                        "completions for a task file as JSONL (--out)")
    _common(p)
    _sampling(p, 4)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--metadata", help="prompt file of an image model: GenEval metadata or prompt JSONL, or "
                                           ".txt with one prompt a line")
    source.add_argument("--tasks", help="reasoning task JSONL (text models)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--outdir", help="GenEval folder to create (image models)")
    target.add_argument("--out", help="JSONL file of completions to write (text models)")

    p = sub.add_parser("eval", help="scores of a model on a prompt file (GenEval-style for images, accuracy for "
                                    "tasks), or of an image folder (--images)")
    _common(p)
    _sampling(p, None)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--metadata", help="prompt file of an image model: GenEval metadata or prompt JSONL, or "
                                           ".txt with one prompt a line (default: the config's eval.metadata)")
    source.add_argument("--tasks", help="reasoning task JSONL, for a text model (default: the config's "
                                        "eval.metadata)")
    source.add_argument("--images", help="a GenEval-layout folder of generated images to score")
    p.add_argument("--results", help="also write one JSON line per image here")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("train", help="RL fine-tuning (Co-GRPO and its peers) on the configured prompts")
    _common(p)
    p.add_argument("--run-dir", help="run directory (default: train.run_dir, or runs/<time>-<mode>)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="continue the run in --run-dir: from its latest complete checkpoint (auto; none yet: start "
                        "over), or from PATH, one of its checkpoints/iter_NNNNNN folders")

    p = sub.add_parser("pretrain", help="train a tiny model (TinyMDM, TinyFlow, TinyMDLM) from scratch on its world")
    _common(p)
    p.add_argument("--out", help="checkpoint path (default: pretrain.out from the config)")

    p = sub.add_parser("export", help="a trained aMUSEd or Meissonic run as its pipeline's folder (diffusers "
                                      "save_pretrained layout)")
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="a run directory (its latest checkpoint) or one of its checkpoints/iter_NNNNNN folders")
    p.add_argument("--out", required=True, help="the folder to write (new or empty)")
    _overrides(p)  # of the run's config.yaml, e.g. model.path where the base folder now lives

    p = sub.add_parser("config", help="print the resolved config (defaults, the file, then --set) as YAML")
    _common(p)
    return parser


COMMANDS = {"sample": cmd_sample, "generate": cmd_generate, "eval": cmd_eval, "pretrain": cmd_pretrain,
            "train": cmd_train, "export": cmd_export, "config": cmd_config}


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
    except Interrupted as exc:
        print(f"cogrpo: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("cogrpo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
