"""Why images fail: per task, the share of images judged correct, missing an object (some include entry found fewer
objects than it asks for: absent, malformed, or in the wrong colour), with every object present but a relation
wrong, or with every object present but too many of a kind (an exclude entry). Reads the per-image results that
`cogrpo eval --results R.jsonl` writes (its `reason` names each failed check), one file per model; prints a markdown
table.

    .venv/bin/cogrpo eval --config configs/smoke-cpu.yaml [--checkpoint RUN] --results R.jsonl
    .venv/bin/python benchmarks/failures.py NAME=R.jsonl [NAME=R.jsonl ...] [--tasks position,color_attr,two_object]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from cogrpo.data.prompts import TASKS

KINDS = ("correct", "an object missing", "relation wrong only", "too many only")


def failure_kind(row: dict) -> str:
    """The row's kind from the judge's reasons: 'expected at least' (include), 'not <relation>' (position),
    'expected fewer than' (exclude)."""
    if row["correct"]:
        return "correct"
    reasons = row["reason"].split("; ")
    if any(r.startswith("expected at least") for r in reasons):
        return "an object missing"
    if any(r.startswith("expected fewer than") for r in reasons):
        return "too many only"
    return "relation wrong only"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", nargs="+", metavar="NAME=R.jsonl")
    parser.add_argument("--tasks", default=",".join(TASKS))
    args = parser.parse_args()
    print("| model | task | images | " + " | ".join(KINDS) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in KINDS) + " |")
    for spec in args.results:
        name, _, path = spec.rpartition("=")
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        for task in args.tasks.split(","):
            kinds = Counter(failure_kind(r) for r in rows if r["tag"] == task)
            total = sum(kinds.values())
            cells = " | ".join(f"{kinds[k] / total:.2f}" for k in KINDS)
            print(f"| {name or path} | {task} | {total} | {cells} |")


if __name__ == "__main__":
    main()
