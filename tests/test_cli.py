"""The CLI end to end, in-process (cogrpo.cli.main) so failures show tracebacks; exit codes as a shell sees them."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import cogrpo
from cogrpo.cli import main
from cogrpo.data.geneval import write_jsonl
from cogrpo.data.prompts import colors, counting, position, single_object, two_object
from cogrpo.models.checkpoint import resolve_checkpoint_path
from cogrpo.proto.config import dump_config, load_config
from cogrpo.proto.layout import CheckpointLayout, RunLayout

RECORDS = [single_object("square"), colors("red", "circle"), counting(2, "triangle"),
           two_object("circle", "square"), position("square", "above", "circle", "blue", "red")]
FAST = ["--set", "sampler.batch_size=16"]
SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke-cpu.yaml")


@pytest.fixture
def metadata(tmp_path):
    path = tmp_path / "m.jsonl"
    write_jsonl(path, RECORDS)
    return path


def test_sample_writes_a_labelled_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", "--config", "configs/smoke-cpu.yaml", "--prompt", "a photo of a red circle",
                 "--n", "4", "--out", str(out), "--steps", "4"]) == 0
    assert out.stat().st_size > 0 and "correct" in capsys.readouterr().out


def test_generate_then_eval_images_matches_eval_metadata(tmp_path, metadata, capsys):
    outdir = tmp_path / "gen"
    common = ["--config", "configs/smoke-cpu.yaml", "--steps", "4", "--n-per-prompt", "2", *FAST]
    assert main(["generate", "--metadata", str(metadata), "--outdir", str(outdir), *common]) == 0
    assert sorted(p.name for p in (outdir / "00004" / "samples").iterdir()) == ["00000.png", "00001.png"]
    capsys.readouterr()
    results = tmp_path / "results.jsonl"
    assert main(["eval", "--config", "configs/smoke-cpu.yaml", "--images", str(outdir), "--json",
                 "--results", str(results)]) == 0
    from_images = json.loads(capsys.readouterr().out)
    assert main(["eval", "--metadata", str(metadata), "--json", *common]) == 0
    from_model = json.loads(capsys.readouterr().out)
    for key in ("overall", "strict", "partial", "by_task", "reward/shapes_strict", "reward/shapes_partial"):
        assert from_images[key] == from_model[key]
    # the config's rewards score the same images as GenEval's judge, which here is the same detector
    assert from_model["reward/shapes_strict"] == from_model["strict"]
    assert from_model["reward/shapes_partial"] == pytest.approx(from_model["partial"])
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 10 and {"tag", "prompt", "correct", "reason"} <= set(rows[0])
    assert set(from_model["by_task"]) == {r["tag"] for r in RECORDS}


def test_train_then_eval_the_run_directory_and_pair_its_model_and_schedule_with_others(tmp_path, metadata, capsys):
    run_dir = tmp_path / "run"
    tiny = ["--set", "train.iterations=2", "--set", "algo.prompts_per_iteration=2", "--set", "algo.group_size=4",
            "--set", "sampler.steps=4", "--set", "train.eval_steps=[4]", "--set", "algo.update=joint",
            "--set", "algo.ema_decay=0.5", "--set", "runtime=local",
            "--set", f"train.eval_metadata={{small: {metadata}}}", *FAST]
    assert main(["train", "--config", "configs/smoke-cpu.yaml", "--run-dir", str(run_dir), *tiny]) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["final_eval"]
    assert main(["eval", "--config", str(run_dir / "config.yaml"), "--checkpoint", str(run_dir),
                 "--metadata", str(metadata), "--steps", "4", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["overall"] == final[0]["overall"]  # same averaged model, same learned schedule, same seeds
    assert again["reward/shapes_partial"] == final[0]["reward/shapes_partial"]
    latest = RunLayout(run_dir).checkpoint(2)
    assert resolve_checkpoint_path(str(run_dir)) == latest.average
    live, average = (load_file(path) for path in (latest.model, latest.average))
    assert not torch.equal(live["head.weight"], average["head.weight"])  # the run exported the average
    assert main(["train", "--config", "configs/smoke-cpu.yaml", "--run-dir", str(run_dir), *tiny]) == 2
    capsys.readouterr()

    def grid(checkpoint, *schedule) -> bytes:
        out = tmp_path / "grid.png"
        assert main(["sample", "--config", str(run_dir / "config.yaml"), "--checkpoint", str(checkpoint),
                     "--prompt", "a photo of a red circle", "--n", "8", "--steps", "4", "--out", str(out),
                     *schedule]) == 0
        return out.read_bytes()

    # --schedule swaps the schedule and keeps the model: the same images as each file alone in a folder of its own
    hand = grid(run_dir, "--schedule", "hand")
    assert hand != grid(run_dir)  # the run learned a schedule of its own
    alone = CheckpointLayout(tmp_path / "alone")
    alone.folder.mkdir()
    shutil.copy(latest.average, alone.model)
    assert hand == grid(alone.model)
    shutil.copy(latest.policy, alone.policy)
    shutil.copy(resolve_checkpoint_path("builtin:tiny_mdm"), alone.model)
    assert grid("builtin:tiny_mdm", "--schedule", str(run_dir)) == grid(alone.model)


def test_config_prints_the_resolved_tree_with_list_items_overridden(capsys):
    assert main(["config", "--config", "configs/smoke-cpu.yaml", "--set", "rewards.1.weight=2",
                 "--set", "sampler.steps=6"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sampler"]["steps"] == 6 and printed["model"]["family"] == "masked_image"
    assert [r["weight"] for r in printed["rewards"]] == [1.0, 2.0]
    assert printed == yaml.safe_load(dump_config(load_config("configs/smoke-cpu.yaml",
                                                             ["rewards.1.weight=2", "sampler.steps=6"])))


def test_version_names_the_package(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"cogrpo {cogrpo.__version__}"


@pytest.mark.parametrize("argv, message", [
    (["config", "--config", SMOKE, "--set", "rewards.5.weight=2"], "'5' is not an index of a list of 2"),
    (["config", "--config", SMOKE, "--set", "rewards.x.weight=2"], "'x' is not an index of a list of 2"),
    (["config", "--set", "x" * 500 + "=1"], "unknown config key '" + "x" * 60 + "...'"),
    (["sample", "--prompt", "a photo of a dog", "--out", "x.png"], "unknown word 'dog'"),
    (["sample", "--prompt", "a photo of a circle", "--out", "x.png", "--n", "0"], "--n must be at least 1"),
    (["eval", "--metadata", "missing.jsonl"], "metadata file not found"),
    (["eval", "--set", "sampler.stepz=3"], "unknown config key 'sampler.stepz'"),
    (["eval", "--checkpoint", "nope.safetensors"], "checkpoint not found"),
    (["eval", "--schedule", "elsewhere"], "--schedule elsewhere: no learned schedule policy there"),
    (["eval", "--steps", "x"], "invalid int value"),
    (["frobnicate"], "invalid choice"),
    (["generate", "--metadata", "m.jsonl"], "required"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "cogrpo", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not any(tmp_path.iterdir())  # nothing half-written
