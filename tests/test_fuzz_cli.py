"""Generated hostile input at the CLI's entry points: configs, metadata lines, task lines and tampered run
directories. Whatever comes in, the command exits 0 or 2 (never a traceback), says so in at most three stderr
lines, and on exit 2 leaves its folder as it found it."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cogrpo.cli import main
from cogrpo.data.prompts import colors, counting, single_object
from cogrpo.data.reasoning import builtin_tasks
from cogrpo.models.checkpoint import resolve_checkpoint_path
from cogrpo.proto.layout import RunLayout
from tests.cli_input import write_files

TEXT = str(Path(__file__).resolve().parents[1] / "configs" / "text-smoke-cpu.yaml")
FUZZ = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CONFIG_KEYS = ["seed", "threads", "runtime", "model", "kind", "checkpoint", "sampler", "steps", "batch_size",
               "temperature", "algo", "mode", "group_size", "lr", "rewards", "weight", "head", "train", "iterations",
               "eval", "metadata", "cluster", "num_cpus", "schedule_policy", "learn", "zzz"]
SCALARS = (st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=True)
           | st.text(max_size=40) | st.sampled_from(["builtin:heldout", "-1", "1e309", "nan", "grpo", "[", "*a"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
YAML_TREE = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.sampled_from(CONFIG_KEYS), inner, max_size=4), max_leaves=10)


def run_cli(argv: list[str], folder: Path, capfd) -> None:
    """Run in `folder`; check the exit code, stderr and what was left."""
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    capfd.readouterr()
    status = main(argv)
    err = capfd.readouterr().err
    assert status in (0, 2), err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err[-2000:]
    if status == 2:
        assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before, "written on exit 2"


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    return tmp_path


def fresh(folder: Path, files: dict[str, bytes]) -> None:
    """The folder emptied, then holding `files` alone."""
    for path in folder.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    write_files(folder, files)


@FUZZ
@given(tree=YAML_TREE, raw=st.binary(max_size=80))
def test_generated_configs(tree, raw, folder, capfd):
    text = yaml.safe_dump(tree, allow_unicode=True).encode()
    for content in (text, raw, text[: len(text) // 2] + raw):
        fresh(folder, {"c.yaml": content})
        run_cli(["config", "--config", "c.yaml"], folder, capfd)


def mutated(record: dict, key: str, value, drop: bool) -> str:
    record = dict(record)
    if drop:
        record.pop(key, None)
    else:
        record[key] = value
    return json.dumps(record)


@FUZZ
@given(base=st.sampled_from([single_object("square"), colors("red", "circle"), counting(2, "triangle")]),
       key=st.sampled_from(["tag", "include", "exclude", "prompt", "extra"]), value=JSON, drop=st.booleans(),
       tail=st.binary(max_size=30))
def test_generated_metadata_lines(base, key, value, drop, tail, folder, capfd):
    fresh(folder, {"m.jsonl": mutated(base, key, value, drop).encode() + b"\n" + tail})
    run_cli(["generate", "--metadata", "m.jsonl", "--outdir", "out", "--n-per-prompt", "1", "--steps", "2"],
            folder, capfd)


@FUZZ
@given(base=st.sampled_from(builtin_tasks("reasoning_heldout")[:3]),
       key=st.sampled_from(["task", "prompt", "answer", "question", "extra"]), value=JSON, drop=st.booleans(),
       tail=st.binary(max_size=30))
def test_generated_task_lines(base, key, value, drop, tail, folder, capfd):
    fresh(folder, {"t.jsonl": mutated(base, key, value, drop).encode() + b"\n" + tail})
    run_cli(["generate", "--config", TEXT, "--tasks", "t.jsonl", "--out", "c.jsonl", "--n-per-prompt", "1"],
            folder, capfd)


RUN = RunLayout("run")
CHECKPOINT = RUN.checkpoint(1)
TAMPERED = [str(p) for p in (RUN.latest_marker, CHECKPOINT.state, CHECKPOINT.model)]


def run_directory() -> dict[str, bytes]:
    """A run directory with one complete checkpoint of the shipped TinyMDM, as `cogrpo train` lays it out."""
    weights = resolve_checkpoint_path("builtin:tiny_mdm").read_bytes()
    state = json.dumps({"iteration": 1, "seed": 0, "runtime": "local", "weight_version": 1}).encode()
    return {str(RUN.marker): b"", str(RUN.latest_marker): CHECKPOINT.folder.name.encode() + b"\n",
            str(CHECKPOINT.model): weights, str(CHECKPOINT.state): state,
            "m.jsonl": json.dumps(single_object("square")).encode()}


@FUZZ
@given(part=st.sampled_from(TAMPERED),
       cut=st.integers(0, 200), junk=st.binary(max_size=64), at=st.integers(0, 400))
def test_tampered_run_directories(part, cut, junk, at, folder, capfd):
    files = run_directory()
    data = files[part]
    files[part] = data[:at] + junk + data[at + cut:]
    fresh(folder, files)
    run_cli(["eval", "--checkpoint", "run", "--metadata", "m.jsonl", "--n-per-prompt", "1", "--steps", "2"],
            folder, capfd)
    assert os.getcwd() == str(folder)
