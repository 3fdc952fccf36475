import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cogrpo.proto.config import Config, dump_config, load_config, resolve_config
from cogrpo.proto.errors import InputError

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_resolves(path):
    config = load_config(path)
    assert isinstance(config, Config)


def test_no_file_and_no_overrides_is_the_default_config():
    """Every face that runs without --config gets exactly the defaults the config classes declare."""
    assert load_config(None, []) == Config()


def test_overrides_set_nested_fields_and_parse_values():
    config = load_config(None, ["sampler.steps=4", "sampler.kind=emerge", "model.checkpoint=null"])
    assert config.sampler.steps == 4 and config.sampler.kind == "emerge" and config.model.checkpoint is None


def test_config_is_frozen():
    """A resolved config is shared by every worker: setting a field raises instead of silently forking it."""
    config = load_config(None)
    with pytest.raises(ValidationError, match="Instance is frozen"):
        config.sampler.steps = 3
    assert config.sampler.steps == Config().sampler.steps


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


def _resolves_or_one_input_error(load) -> None:
    try:
        config = load()
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(config, Config)


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True), st.text(max_size=8))
_tree = st.recursive(_leaf, lambda children: st.dictionaries(st.sampled_from(
    ["seed", "sampler", "steps", "kind", "model", "arch", "guidance", "bogus", "eval", "reward", "head"]),
    children, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["seed", "sampler", "model", "eval", "reward", "pretrain", "junk"]),
                       _tree, max_size=4))
def test_fuzzed_config_trees_either_resolve_or_raise_one_input_error(tree):
    _resolves_or_one_input_error(lambda: resolve_config(tree))


# `--set` strings: real and made-up key paths, with YAML values a user might type or mistype (aliases, tags,
# recursion, unclosed brackets, non-finite numbers), or any text at all
_key = st.lists(st.sampled_from(["seed", "sampler", "steps", "guidance", "model", "arch", "heads", "metrics", "port",
                                 "host", "rewards", "0", "algo", "lr", "cluster", "rollout_resources", "", "x y"]),
                min_size=1, max_size=4).map(".".join)
_raw = st.one_of(st.text(max_size=20), st.sampled_from(
    ["null", "~", "[1, 2]", "{a: 1}", ".inf", "-.nan", "1e999", "-3", "[[", "&a [*a]", "*nothing", "!!python/none",
     "!!binary aGk=", "2020-01-01", "'x", "{kind: clip}", "[{kind: shapes, head: partial}]", "a: b: c"]))
_assignment = st.one_of(st.builds("{}={}".format, _key, _raw), st.text(max_size=30))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["seed", "sampler", "model", "metrics", "junk"]), _tree, max_size=3),
       st.lists(_assignment, max_size=4))
def test_fuzzed_overrides_either_resolve_or_raise_one_input_error(tree, overrides):
    _resolves_or_one_input_error(lambda: resolve_config(tree, overrides))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), _tree.map(yaml.safe_dump).map(str.encode),
                 st.text(max_size=200).map(str.encode)))
def test_fuzzed_config_files_either_load_or_raise_one_input_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_bytes(content)
    _resolves_or_one_input_error(lambda: load_config(path))


def test_the_model_family_is_implied_by_the_kind_and_recorded():
    config = load_config("configs/smoke-cpu.yaml")
    assert config.model.family == "masked_image"
    assert "family: masked_image" in dump_config(config)
    assert load_config(None, ["model.kind=amused", "model.path=/models/amused"]).model.family == "masked_image"
    for overrides, message in [
        (["model.family=flow"], "unknown family 'flow'"),
        (["model.family=masked_image", "model.kind=null"], "kind None is not a backbone of family masked_image"),
        (["model.options={depth: 3}"], "options are for a family of one's own"),
        (["schedule_policy.learn=[noise]"], "family masked_image has no knob 'noise'"),
        (["model.family=no.such.module:Family", "model.kind=null", "model.checkpoint=null"],
         "cannot import plugin module no.such.module"),
        (["rewards=[{kind: plugin, target: not-a-reference}]"], "kind plugin needs target: package.module:Class"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            load_config("configs/smoke-cpu.yaml", overrides)
