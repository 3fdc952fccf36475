"""Checkpoint and resume: a run stopped after its checkpoint and continued ends exactly where the same run done in
one go ends (weights, optimizer states, metrics rows), in either runtime; the CLI's --resume edge cases."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cogrpo.cli import main
from cogrpo.cluster.loop import trainer
from cogrpo.proto.layout import RunLayout

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}
TIMING = {"rollout_s", "update_s", "iteration_s", "images_per_s", "seconds", "sync_s"}
SIX = ["train.iterations=6", "train.checkpoint_every=3", "algo.ema_decay=0.5"]  # the average resumes too


def rows(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    """A run's rows without the timings (which differ between any two runs)."""
    lines = (run_dir / name).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def assert_same_tree(a, b, where: str = "") -> None:
    """Two nested structures of tensors and plain values are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_end(a: Path, b: Path, files=("model", "average", "policy")) -> None:
    """Same final checkpoint files (tensors bit for bit), same metrics and evaluation rows."""
    for name in files:
        one, two = (getattr(RunLayout(run).checkpoint(6), name) for run in (a, b))
        load = load_file if one.suffix == ".safetensors" else lambda p: torch.load(p, weights_only=True)
        assert_same_tree(load(one), load(two), name)
    assert rows(a) == rows(b)
    assert [r["iteration"] for r in rows(b)] == [1, 2, 3, 4, 5, 6]
    assert rows(a, "eval.jsonl") == rows(b, "eval.jsonl")


class Killed(Exception):
    pass


def test_local_run_killed_after_its_checkpoint_resumes_to_the_same_end(tmp_path, tiny):
    config = tiny("runtime=local", *SIX)
    trainer(config, str(tmp_path / "straight"), log=lambda line: None).fit()

    run = tmp_path / "resumed"
    doomed = trainer(config, str(run), log=lambda line: None)
    log_metrics = doomed.run.log_metrics

    def dies_after_logging_iteration_5(row):
        log_metrics(row)
        if row["iteration"] == 5:
            raise Killed

    doomed.run.log_metrics = dies_after_logging_iteration_5
    with pytest.raises(Killed):
        doomed.fit()
    assert (run / "checkpoints" / "latest").read_text() == "iter_000003"
    assert len(rows(run)) == 5  # rows 4 and 5 outlived the checkpoint: the resumed run must drop them
    assert RunLayout(run).lock.exists()  # a killed process leaves its lock behind; here it still lives, so
    doomed.close()  # the loop closes as the process's death would free it
    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # a new process would not share these states
    resumed = trainer(config, str(run), log=lambda line: None, resume="auto")
    assert resumed.start == 3
    resumed.fit()
    assert_same_end(tmp_path / "straight", run, ("model", "average", "policy", "optimizers"))


def _train(run_dir: Path, overrides: list[str], *extra: str) -> list[str]:
    command = [sys.executable, "-m", "cogrpo.train", "--config", "configs/smoke-cpu.yaml", "--run-dir", str(run_dir)]
    for item in overrides:
        command += ["--set", item]
    return [*command, *extra]


def _run(command: list[str], log: Path) -> None:
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, log.read_text()[-3000:]


def test_ray_job_killed_after_its_checkpoint_resumes_to_the_same_end(tmp_path, tiny_overrides):
    # two learner ranks under ZeRO-3: each rank's optimizer partition must come back to the rank that owns it
    overrides = [*tiny_overrides, *SIX, "runtime=ray", "sampler.batch_size=4", "cluster.rollout_cpus=0.5",
                 "cluster.learner_cpus=0.5", "cluster.learner_ranks=2", "cluster.zero_stage=3"]
    _run(_train(tmp_path / "straight", overrides), tmp_path / "straight.log")

    run = tmp_path / "resumed"
    latest = run / "checkpoints" / "latest"
    with open(tmp_path / "killed.log", "w") as out:  # a session of its own: the kill takes the job's Ray too
        job = subprocess.Popen(_train(run, overrides), cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.time() + 600
    while not (latest.is_file() and latest.read_text() == "iter_000003"):
        assert job.poll() is None and time.time() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert latest.read_text() == "iter_000003"
    _run(_train(run, overrides, "--resume", "auto"), tmp_path / "resumed.log")
    assert "resumed from" in (tmp_path / "resumed.log").read_text()
    assert_same_end(tmp_path / "straight", run)


def test_resume_edge_cases_through_the_cli(tmp_path, tiny_overrides, capsys):
    run = tmp_path / "run"
    base = ["train", "--config", "configs/smoke-cpu.yaml", "--run-dir", str(run), "--set", "runtime=local",
            "--set", "train.eval_at_start=false"]
    for item in tiny_overrides:
        base += ["--set", item]

    # a directory of the user's that is no cogrpo run is not "started over" (emptied) by --resume auto
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"iteration": 1, "stale": true}\n{"iteration": 2, "trunc')
    assert main([*base, "--resume", "auto"]) == 2
    assert "not a cogrpo run directory" in capsys.readouterr().err and "stale" in (run / "metrics.jsonl").read_text()
    # a job killed before its first checkpoint left a row behind: --resume auto starts over, without that row
    RunLayout(run).marker.touch()
    assert main([*base, "--resume", "auto"]) == 0
    assert [(r["iteration"], "stale" in r) for r in rows(run)] == [(1, False), (2, False)]

    capsys.readouterr()
    assert main([*base, "--resume", "auto"]) == 2  # finished: nothing to do is an error, never a silent success
    assert "nothing to do" in capsys.readouterr().err
    assert main(base) == 2  # without --resume the run directory is not reused

    assert main([*base, "--set", "train.iterations=3", "--resume", "auto"]) == 0  # one more iteration
    assert [r["iteration"] for r in rows(run)] == [1, 2, 3]
    assert (run / "checkpoints" / "latest").read_text() == "iter_000003"

    # an older checkpoint by path: the later rows go, and `latest` follows the new course
    assert main([*base, "--set", "train.iterations=3", "--resume", str(run / "checkpoints" / "iter_000002")]) == 0
    assert [r["iteration"] for r in rows(run)] == [1, 2, 3]

    capsys.readouterr()
    for argv, message in [
        ([*base, "--resume", str(tmp_path)], "not a checkpoint folder of run directory"),
        ([*base, "--set", "runtime=ray", "--set", "train.iterations=4", "--resume", "auto"],
         "written by runtime local"),
        ([a for a in base if a not in ("--run-dir", str(run))] + ["--resume", "auto"], "--resume needs"),
    ]:
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_a_run_directory_has_one_writer_and_ctrl_c_names_where_to_continue(tmp_path, tiny_overrides, capsys,
                                                                          monkeypatch):
    from cogrpo.cluster.loop import TrainingLoop

    run = tmp_path / "run"
    base = ["train", "--config", "configs/smoke-cpu.yaml", "--run-dir", str(run), "--set", "runtime=local",
            "--set", "train.eval_at_start=false", "--set", "train.checkpoint_every=1"]
    for item in tiny_overrides:
        base += ["--set", item]
    layout = RunLayout(run)
    run.mkdir()
    layout.marker.touch()
    layout.lock.write_text(f"{os.getpid()} {__import__('socket').gethostname()}\n")  # a live writer: this process
    assert main([*base, "--resume", "auto"]) == 2
    assert f"in use by process {os.getpid()}" in capsys.readouterr().err and not layout.config.exists()

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    layout.lock.write_text(f"{done.stdout.strip()} {__import__('socket').gethostname()}\n")  # its process is gone
    iterate = TrainingLoop.iterate

    def interrupted_at_the_second(self, iteration):
        if iteration == 1:
            raise KeyboardInterrupt
        return iterate(self, iteration)

    monkeypatch.setattr(TrainingLoop, "iterate", interrupted_at_the_second)
    assert main([*base, "--resume", "auto"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"cogrpo: interrupted; the last complete checkpoint is {layout.checkpoint(1).folder}: continue "
                   "with --resume auto")
    assert not layout.lock.exists()  # released on the way out
    monkeypatch.setattr(TrainingLoop, "iterate", iterate)
    assert main([*base, "--resume", "auto"]) == 0
    assert [r["iteration"] for r in rows(run)] == [1, 2]
