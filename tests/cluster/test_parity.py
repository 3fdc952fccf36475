"""Nothing the masked image path learns moved when the model families got a seam of their own: the smoke config's
first 3 iterations (rewards, losses, every learner metric) and the evaluations after them equal the values measured
on the commit before (tests/fixtures/smoke_parity.json, with how they were measured). In one process: that the Ray
runtime gives what the single process gives is tests/cluster/test_ray_runtime.py's (and the flow and text runs'),
with two learner ranks tests/cluster/test_rank_parity.py's."""

import json
from pathlib import Path

import pytest

from cogrpo.proto.config import load_config

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "smoke_parity.json").read_text())


def same(expected, got) -> bool:
    """Rewards, counts and evaluations exactly; losses and gradient norms to float32 rounding (the thread count the
    fixture was measured with changes their last digits, never a reward)."""
    if isinstance(expected, float):
        return got == pytest.approx(expected, rel=1e-4, abs=1e-7)
    return expected == got


def test_the_smoke_configs_first_iterations_are_those_of_the_commit_before(tmp_path, fit_run):
    config = load_config("configs/smoke-cpu.yaml", [*FIXTURE["overrides"], "runtime=local"])
    loop = fit_run(config, tmp_path / "run")
    assert len(loop.run.metrics) == len(FIXTURE["metrics"]) == 3
    for expected, got in zip(FIXTURE["metrics"], loop.run.metrics):
        differ = {key: (value, got.get(key)) for key, value in expected.items() if not same(value, got.get(key))}
        assert not differ, f"iteration {expected['iteration']}: {differ}"
    assert len(loop.run.evals) == len(FIXTURE["evals"]) == 2
    for expected, got in zip(FIXTURE["evals"], loop.run.evals):
        assert {key: got[key] for key in expected} == expected
