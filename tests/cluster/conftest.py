import pytest

from cogrpo.data.geneval import write_jsonl
from cogrpo.data.prompts import builtin_metadata
from cogrpo.proto.config import load_config


@pytest.fixture(scope="session")
def eval_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    write_jsonl(path, builtin_metadata("heldout")[:6])
    return path


@pytest.fixture
def tiny_overrides(eval_file):
    """`--set` values over configs/smoke-cpu.yaml for a few-second run in one process: 2 iterations of 2 prompts x 4
    samples, 4 steps, a 6-prompt eval."""
    return ["runtime=local", "train.iterations=2", "algo.prompts_per_iteration=2", "algo.group_size=4",
            "sampler.steps=4", "train.eval_steps=[4]", f"train.eval_metadata={{heldout: {eval_file}}}",
            "algo.alternate_every=1", "sampler.batch_size=8"]


@pytest.fixture
def tiny(tiny_overrides):
    """The tiny run's config, with more overrides on top."""
    def make(*overrides):
        return load_config("configs/smoke-cpu.yaml", [*tiny_overrides, *overrides])
    return make
