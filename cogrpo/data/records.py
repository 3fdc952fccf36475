"""Prompt files by what a model reads: reasoning tasks for text families; for image families a plain-text file
(`.txt`: one prompt per line, blank lines skipped) or JSONL (GenEval metadata, or objects with a `prompt`), checked
for the prompts' world (`Config.prompt_world`). "builtin:NAME" names a file shipped in cogrpo/data/metadata."""

from __future__ import annotations

from cogrpo.data.geneval import prompt_record, read_metadata, resolve_metadata_path
from cogrpo.data.jsonl import read_lines
from cogrpo.data.reasoning import read_tasks


def read_records(spec: str, world: str) -> list[dict]:
    """The records of a prompt file, each checked: tasks in the "reasoning" world, prompts of the "shapes" world
    (each a metadata record its judge scores) or of an "open" one (any prompt, GenEval metadata of any class)."""
    path = resolve_metadata_path(spec)
    if world == "reasoning":
        return read_tasks(path)
    if path.suffix == ".txt":
        return [prompt_record(line.strip(), where, world) for where, line in read_lines(path, "prompt")]
    return read_metadata(path, world)
