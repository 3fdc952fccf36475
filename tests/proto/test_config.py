from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cogrpo.proto.config import Config, dump_config, load_config, resolve_config
from cogrpo.proto.errors import InputError

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_resolves(path):
    config = load_config(path)
    assert isinstance(config, Config)
    assert load_config(None, []) is not None


def test_overrides_set_nested_fields_and_parse_values():
    config = load_config(None, ["sampler.steps=4", "sampler.kind=emerge", "model.checkpoint=null"])
    assert config.sampler.steps == 4 and config.sampler.kind == "emerge" and config.model.checkpoint is None


def test_config_is_frozen():
    config = load_config(None)
    with pytest.raises(Exception):
        config.sampler.steps = 3


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["seed=5", "sampler.guidance=2.5"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


@pytest.mark.parametrize("overrides, message", [
    (["sampler.stepz=3"], "unknown config key 'sampler.stepz'"),
    (["sampler.steps=abc"], "config sampler.steps"),
    (["sampler.steps=0"], "config sampler.steps"),
    (["sampler.kind=greedy"], "config sampler.kind"),
    (["model.arch.heads=3"], "not divisible"),
    (["nonsense"], "key=value"),
    (["seed=1", "seed.x=1"], "not a section"),
])
def test_bad_overrides_are_one_clear_line(overrides, message):
    with pytest.raises(InputError, match=message) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampler: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(InputError, match="mapping"):
        load_config(bad)
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match="UTF-8"):
        load_config(bad)


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True), st.text(max_size=8))
_tree = st.recursive(_leaf, lambda children: st.dictionaries(st.sampled_from(
    ["seed", "sampler", "steps", "kind", "model", "arch", "guidance", "bogus", "eval", "reward", "head"]),
    children, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["seed", "sampler", "model", "eval", "reward", "pretrain", "junk"]),
                       _tree, max_size=4))
def test_fuzzed_config_trees_either_resolve_or_raise_one_input_error(tree):
    try:
        config = resolve_config(tree)
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(config, Config)
