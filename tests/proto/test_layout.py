"""The checkpoint protocol under a kill: parts into `.iter_NNNNNN.partial`, then state.json, the rename, and
`latest` rewritten (temp file + os.replace). Whichever stage a job dies at, `latest` still names the previous
complete checkpoint, a resumed run continues from it, and the next attempt at the killed checkpoint succeeds."""

import os
from pathlib import Path

import pytest

from cogrpo.cluster.run_dir import resume_point
from cogrpo.proto.config import load_config
from cogrpo.proto.layout import RunLayout


class Killed(BaseException):
    """The process dying: no `except Exception` on the way catches it."""


def stage_parts(layout: RunLayout, iteration: int) -> Path:
    """The parts a checkpoint's owners write before the driver commits it."""
    staging = layout.staging(iteration)
    (staging / "model.safetensors").write_bytes(b"weights of iteration %d" % iteration)
    return staging


def die(*args, **kwargs):
    raise Killed


WRITES = {"state.json": 1, "write latest": 2}  # the files a commit writes, in order


def kill_at(stage: str, monkeypatch) -> None:
    """Make the commit die at `stage`: halfway through the n-th file it writes (state.json, then `latest`'s
    text), at the rename, or at `latest`'s replace."""
    if stage in WRITES:
        writes, write_text = [], Path.write_text

        def half_written(path, text, *args, **kwargs):
            writes.append(path)
            if len(writes) < WRITES[stage]:
                return write_text(path, text, *args, **kwargs)
            with path.open("w") as f:
                f.write(text[:len(text) // 2])
            die()
        monkeypatch.setattr(Path, "write_text", half_written)
    elif stage == "rename":
        monkeypatch.setattr(Path, "rename", die)
    elif stage == "replace latest":
        monkeypatch.setattr(os, "replace", die)


@pytest.mark.parametrize("stage", ["parts", "state.json", "rename", "write latest", "replace latest"])
def test_a_job_killed_while_checkpointing_resumes_from_the_previous_complete_checkpoint(tmp_path, monkeypatch, stage):
    config = load_config(None, ["train.iterations=5"])
    layout = RunLayout(tmp_path / "run")
    layout.checkpoints.mkdir(parents=True)
    layout.marker.touch()
    stage_parts(layout, 1)
    previous = layout.commit(1, {"runtime": config.runtime})

    (stage_parts(layout, 2) / "optimizers.pt").write_bytes(b"half a")  # a part the killed job left half-written
    if stage != "parts":  # "parts": killed before the driver commits at all
        with monkeypatch.context() as patch:
            kill_at(stage, patch)
            with pytest.raises(Killed):
                layout.commit(2, {"runtime": config.runtime})

    assert layout.latest() == previous
    point = resume_point(config, str(layout.root), "auto")
    assert point.checkpoint == previous and point.state == {"iteration": 1, "runtime": config.runtime}

    stage_parts(layout, 2)  # the resumed run reaches iteration 2 again: leftovers of the killed attempt give way
    done = layout.commit(2, {"runtime": config.runtime})
    assert layout.latest() == done == layout.checkpoint(2).folder
    assert layout.checkpoint(2).read_state()["iteration"] == 2
    assert sorted(p.name for p in done.iterdir()) == ["model.safetensors", "state.json"]
    assert sorted(p.name for p in layout.checkpoints.iterdir()) == ["iter_000001", "iter_000002", "latest"]
