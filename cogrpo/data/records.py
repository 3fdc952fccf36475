"""Prompt files by what a model family makes: GenEval metadata for image families, reasoning tasks for text ones;
"builtin:NAME" names a file shipped in cogrpo/data/metadata."""

from __future__ import annotations

from cogrpo.data.geneval import read_metadata, resolve_metadata_path
from cogrpo.data.reasoning import read_tasks


def read_records(spec: str, samples: str) -> list[dict]:
    """The records of a prompt file, each checked: tasks when the family makes texts, metadata when images."""
    path = resolve_metadata_path(spec)
    return read_tasks(path) if samples == "texts" else read_metadata(path)
