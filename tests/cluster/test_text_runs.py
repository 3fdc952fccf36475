"""The text family trains through both runtimes with the learner and runtimes as they are: the shipped TinyMDLM under
Co-GRPO (configs/text-smoke-cpu.yaml, shortened) gives the same rewards, losses and evaluations in one process and
on an embedded Ray cluster; the re-masking estimators train through the loop; the CLI evaluates and generates."""

import json

import pytest

from cogrpo.cli import main
from cogrpo.data.geneval import write_jsonl
from cogrpo.data.reasoning import builtin_tasks
from cogrpo.proto.config import load_config
from tests.conftest import fit_loop

CONFIG = "configs/text-smoke-cpu.yaml"
SHORT = ["train.iterations=2", "algo.prompts_per_iteration=2", "algo.group_size=4", "sampler.steps=6",
         "eval.steps=6", "train.eval_steps=[6]", "sampler.batch_size=8", "algo.alternate_every=1",
         "train.eval_at_start=false", "cluster.rollout_cpus=0.5", "cluster.learner_cpus=0.5"]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks") / "tasks.jsonl"
    write_jsonl(path, builtin_tasks("reasoning_heldout")[:6])
    return path


@pytest.fixture(scope="module")
def sudoku(tmp_path_factory):
    """RL prompts whose rewards vary within a group: the shipped model solves most, not all, 4x4 Sudokus."""
    path = tmp_path_factory.mktemp("sudoku") / "sudoku.jsonl"
    write_jsonl(path, [t for t in builtin_tasks("reasoning_train") if t["task"] == "sudoku"][:20])
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tasks):
    """The same short Co-GRPO run in each runtime."""
    return {runtime: fit_loop(load_config(CONFIG, [*SHORT, f"runtime={runtime}",
                                                   f"train.eval_metadata={{heldout: {tasks}}}"]),
                              tmp_path_factory.mktemp(runtime))
            for runtime in ("local", "ray")}


def test_cogrpo_on_tinymdlm_gives_the_same_run_in_both_runtimes(runs):
    local, ray = runs["local"].run, runs["ray"].run
    for a, b in zip(local.metrics, ray.metrics, strict=True):
        for key in ("reward/reasoning_correct", "adv_std", "usable", "train_theta", "train_phi"):
            assert a[key] == b[key], key
        for key in ("loss_theta", "loss_phi", "kl_ref"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert local.evals[-1]["accuracy"] == ray.evals[-1]["accuracy"]
    assert set(local.evals[-1]["by_task"]) == {"arith", "sudoku", "countdown"}
    assert [row["train_theta"] for row in local.metrics] == [True, False]  # alternating, theta first


@pytest.mark.parametrize("estimator", ["maskgrpo", "unigrpo", "d1"])
def test_the_remasking_estimators_train_tinymdlm(tmp_path, tasks, sudoku, estimator):
    config = load_config(CONFIG, [*SHORT, "algo.mode=grpo", f"algo.theta_likelihood={estimator}",
                                  "algo.inner_epochs=2", "train.iterations=1", f"train.prompts={sudoku}",
                                  f"train.eval_metadata={{heldout: {tasks}}}"])
    rows = fit_loop(config, tmp_path).run.metrics
    assert rows[0]["train_theta"] and rows[0]["adv_std"] > 0 and rows[0]["grad_norm_theta"] > 0


def test_eval_prints_accuracy_by_task_and_generate_writes_completions(tmp_path, tasks, capsys):
    assert main(["eval", "--config", CONFIG, "--tasks", str(tasks), "--steps", "6", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["by_task"]) == {"arith", "sudoku", "countdown"}
    assert result["accuracy"] == pytest.approx(sum(result["by_task"].values()) / 3)
    assert 0 <= result["reward/reasoning_correct"] <= 1
    out = tmp_path / "completions.jsonl"
    assert main(["generate", "--config", CONFIG, "--tasks", str(tasks), "--out", str(out), "--steps", "6",
                 "--n-per-prompt", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and {"task", "prompt", "reference", "completion", "extracted", "correct"} <= set(rows[0])


@pytest.mark.parametrize("args, message", [
    (["eval", "--config", CONFIG, "--metadata", "x.jsonl"], "--metadata is for image models"),
    (["eval", "--config", "configs/smoke-cpu.yaml", "--tasks", "x.jsonl"], "--tasks is for text models"),
    (["generate", "--config", CONFIG, "--tasks", "x.jsonl", "--outdir", "d"], "--out is required"),
    (["generate", "--config", CONFIG, "--tasks", "x.jsonl", "--out", "c.txt"], "must be a .jsonl file"),
    (["sample", "--config", CONFIG, "--prompt", "1+1=", "--out", "g.png"], "--out does not apply")])
def test_text_and_image_flags_are_not_mixed(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err
