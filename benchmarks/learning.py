"""Learning benchmark: base -> grpo, schedule_only, cogrpo and the MaskGRPO estimator, trained with the same
number of rollouts and the same seeds, each evaluated on the held-out (and training-split) GenEval-format prompts
at 8 and at 4 decoding steps. Writes the table into BENCHMARKS.md between its markers (`--table NAME` picks
another pair of markers, so a variant keeps its own table).

    .venv/bin/python benchmarks/learning.py [--iterations 100] [--methods grpo,schedule_only,cogrpo,maskgrpo]
                                            [--seeds 0,1,2] [--set KEY=VALUE ...] [--table NAME]

With --seeds, every method runs once per seed (the base evaluated with that seed too), and a method's rows are
followed by their mean: whether a gain holds across seeds, not only in one run.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from cogrpo.cluster.build import build_policies
from cogrpo.cluster.loop import trainer
from cogrpo.data.records import read_records
from cogrpo.proto.config import load_config
from cogrpo.rollout.collect import evaluate
from cogrpo.rollout.schedule import schedule_for

METHODS = {
    "grpo": ["algo.mode=grpo"],
    "schedule_only": ["algo.mode=schedule_only"],
    "cogrpo": ["algo.mode=cogrpo"],
    "maskgrpo": ["algo.mode=grpo", "algo.theta_likelihood=maskgrpo", "sampler.kind=emerge", "algo.inner_epochs=4"],
}
EVAL_STEPS = (8, 4)


def one_process_run(iterations: int, eval_steps: tuple[int, ...], sets: list[str]) -> list[str]:
    """The overrides every method's run shares: one process, the benchmark's --set, `iterations` iterations, one
    evaluation (at `eval_steps`) and one checkpoint at the end."""
    return ["runtime=local", *sets, f"train.iterations={iterations}", f"train.eval_every={iterations}",
            f"train.checkpoint_every={iterations}", f"train.eval_steps={list(eval_steps)}", "train.eval_at_start=false"]


def base_summaries(config, eval_steps: tuple[int, ...] = EVAL_STEPS) -> dict:
    """The shipped model with the hand schedule, as every method starts: the family's summary per (split, steps)."""
    policies = build_policies(config)
    out = {}
    for split, spec in config.train.eval_metadata.items():
        records = read_records(spec, config.prompt_world)
        for steps in eval_steps:
            schedule = schedule_for(config, policies.family, policies.policy, steps, sample_actions=False)
            result = evaluate(policies.family, policies.model, schedule, records, steps, config.seed,
                              config.sampler.batch_size, 1)
            out[(split, steps)] = result.summary
    return out


def base_scores(config, eval_steps: tuple[int, ...] = EVAL_STEPS) -> dict:
    """GenEval's overall per (split, steps) of the shipped model with the hand schedule."""
    return {key: summary["overall"] for key, summary in base_summaries(config, eval_steps).items()}


def method_arguments(config: str, iterations: int, methods: dict, out: str,
                     seeds: str | None) -> argparse.ArgumentParser:
    """The options every learning benchmark takes: its config, the iterations, the methods (all by default), the
    seeds, where runs go, the file its table is written into, and overrides for every method."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=config)
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--methods", default=",".join(methods))
    parser.add_argument("--seeds", default=seeds, help="comma-separated seeds, each run per method")
    parser.add_argument("--out", default=out)
    parser.add_argument("--write", default="BENCHMARKS.md")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override applied to every method (repeatable)")
    return parser


def main() -> None:
    parser = method_arguments("configs/smoke-cpu.yaml", 100, METHODS, "runs/bench-learning", None)
    parser.add_argument("--table", default="learning", help="the name in the table's markers in --write")
    args = parser.parse_args()  # --seeds unset: the config's seed, one run
    common = one_process_run(args.iterations, EVAL_STEPS, args.set)
    seeds = [None] if args.seeds is None else [int(seed) for seed in args.seeds.split(",")]
    rows, bases = [], {}
    for method in args.methods.split(","):
        runs = []
        for seed in seeds:
            name = method if seed is None else f"{method}-seed{seed}"
            overrides = [] if seed is None else [f"seed={seed}"]
            config = load_config(args.config,
                                 common + METHODS[method] + overrides + [f"train.run_dir={args.out}/{name}"])
            kind = config.sampler.kind
            if (kind, config.seed) not in bases:
                bases[kind, config.seed] = base_scores(config)
            start = time.time()
            evals = trainer(config, log=lambda line: None).fit()
            minutes = (time.time() - start) / 60
            scores = {(r["split"], r["steps"]): r["overall"] for r in evals}
            row = {"method": method if seed is None else f"{method}, seed {seed}", "sampler": kind,
                   "minutes": round(minutes, 1),
                   **{f"{split}@{steps}": round(v, 3) for (split, steps), v in scores.items()},
                   **{f"base {split}@{steps}": round(v, 3) for (split, steps), v in bases[kind, config.seed].items()}}
            runs.append(row)
            print(json.dumps(row), flush=True)
        rows += runs
        if len(runs) > 1:
            rows.append({**{k: round(sum(r[k] for r in runs) / len(runs), 1 if k == "minutes" else 3) for k in runs[0]
                            if k not in ("method", "sampler")},
                         "method": f"{method}, mean of {len(runs)} seeds", "sampler": runs[0]["sampler"]})
    table = render(rows, args)
    print(table)
    write_block(Path(args.write), args.table, table)


def write_block(path: Path, name: str, table: str) -> None:
    """Put `table` between the markers `name` in `path` (appended, with its markers, if they are not there)."""
    text = path.read_text() if path.exists() else ""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{table}\n{end}"
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S) if begin in text \
        else text + "\n" + block + "\n"
    path.write_text(text)


def render(rows: list[dict], args) -> str:
    options = (f" --seeds {args.seeds}" if args.seeds else "") + "".join(f" --set {o}" for o in args.set)
    if args.table != "learning":
        options += f" --table {args.table}"
    lines = [f"`.venv/bin/python benchmarks/learning.py --iterations {args.iterations} --methods {args.methods}"
             f"{options}`",
             "", "| method | sampler | minutes | held-out@8 (base) | held-out@4 (base) | train@8 (base) "
             "| train@4 (base) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [f"{r[f'{s}@{n}']:.3f} ({r[f'base {s}@{n}']:.3f})" for s in ("heldout", "train") for n in EVAL_STEPS]
        lines.append(f"| {r['method']} | {r['sampler']} | {r['minutes']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
