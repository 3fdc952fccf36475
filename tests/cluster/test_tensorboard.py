"""metrics.tensorboard: a tiny CPU training writes every number of its metrics.jsonl and eval.jsonl rows as a
TensorBoard scalar at the row's iteration, in the run directory's tensorboard/ folder, read back here with
TensorBoard's own reader."""

import json
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cogrpo.proto.layout import RunLayout
from tests.cli_input import fails

pytestmark = pytest.mark.usefixtures("single_thread")

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke-cpu.yaml")


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def numbers(row: dict, skip: tuple[str, ...]) -> dict[str, float]:
    """A row's numbers by tag: nested counts as key/name."""
    out = {}
    for key, value in row.items():
        if key in skip:
            continue
        for name, number in (value.items() if isinstance(value, dict) else [(None, value)]):
            if isinstance(number, (int, float)):
                out[key if name is None else f"{key}/{name}"] = float(number)
    return out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected(run: RunLayout) -> dict[str, list[tuple[int, float]]]:
    """What the run directory's rows say TensorBoard should hold."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows(run.metrics):
        for tag, value in numbers(row, ("iteration",)).items():
            out.setdefault(tag, []).append((row["iteration"], value))
    for row in rows(run.evals):
        prefix = f"eval/{row['split']}/steps_{row['steps']}/"
        for tag, value in numbers(row, ("iteration", "split", "steps", "schedule")).items():
            out.setdefault(prefix + tag, []).append((row["iteration"], value))
    return out


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for tag, points in want.items():
        assert [step for step, _ in got[tag]] == [step for step, _ in points], tag
        assert [value for _, value in got[tag]] == pytest.approx([value for _, value in points], rel=1e-6), tag


def test_every_number_of_every_row_is_a_scalar_at_its_iteration(tiny, fit_run, tmp_path):
    run = RunLayout(tmp_path / "run")
    fit_run(tiny("metrics.tensorboard=true"), run.root)
    got, want = scalars(run.tensorboard), expected(run)
    assert [step for step, _ in got["reward/shapes_strict"]] == [1, 2]
    assert [step for step, _ in got["eval/heldout/steps_4/overall"]] == [0, 2]
    assert {"approx_kl_theta", "approx_kl_phi", "iteration_s", "eval/heldout/steps_4/by_task/colors"} <= set(got)
    assert_same(got, want)


def test_a_resumed_run_hides_the_events_past_its_checkpoint(tiny, fit_run, tmp_path):
    """The run directory drops a killed attempt's rows past the checkpoint it resumes from; TensorBoard's view of
    the event files drops them too, so each iteration shows once, with the values of the attempt that kept it."""
    from cogrpo.cluster.loop import trainer

    run = RunLayout(tmp_path / "run")
    config = tiny("metrics.tensorboard=true", "train.checkpoint_every=1", "train.eval_at_start=false")
    fit_run(config, run.root)
    loop = trainer(config.model_copy(update={"seed": 1}), str(run.root), log=lambda line: None,
                   resume=str(run.checkpoint(1).folder))
    try:
        loop.fit()
    finally:
        loop.close()
    assert len(list(run.tensorboard.iterdir())) == 2  # one event file per attempt
    got = scalars(run.tensorboard)
    assert [step for step, _ in got["adv_std"]] == [1, 2]
    assert_same(got, expected(run))


def test_without_the_tensorboard_package_the_run_is_refused_before_its_directory(workdir, capfd, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if it were not installed
    fails(["train", "--config", SMOKE, "--run-dir", "run", "--set", "runtime=local", "--set",
           "metrics.tensorboard=true"], "metrics.tensorboard needs the tensorboard package", workdir, capfd)
