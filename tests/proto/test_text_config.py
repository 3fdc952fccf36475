import pytest

from cogrpo.proto.config import RewardConfig, dump_config, load_config
from cogrpo.proto.errors import InputError
from cogrpo.rollout.masked_text.family import MaskedTextFamily

TEXT = ["model.kind=tiny_mdlm"]


def test_a_text_config_defaults_to_llada_s_sampler_and_the_reasoning_world():
    config = load_config(None, TEXT)
    assert config.model.family == "masked_text" and config.samples == "texts"
    assert config.model.checkpoint == "builtin:tiny_mdlm"
    sampler = config.sampler
    assert (sampler.kind, sampler.length, sampler.block_length, sampler.steps) == ("low_confidence", 24, 8, 12)
    assert config.rewards == (RewardConfig(kind="reasoning", head="correct"),)
    assert config.train.prompts == "builtin:reasoning_train"
    assert config.train.eval_metadata == {"heldout": "builtin:reasoning_heldout"} and config.train.eval_steps == (12,)
    assert config.eval.metadata == "builtin:reasoning_heldout" and config.eval.steps == 12


def test_an_image_config_keeps_its_own_defaults():
    config = load_config(None)
    assert config.model.family == "masked_image" and config.samples == "images"
    assert config.sampler.kind == "maskgit" and config.sampler.length is None and config.sampler.block_length is None
    assert [r.name for r in config.rewards] == ["shapes_strict", "shapes_partial"]
    assert config.train.prompts is None and config.eval.metadata == "builtin:heldout"


def test_what_a_text_config_says_wins_and_the_rest_still_defaults():
    config = load_config(None, [*TEXT, "sampler.steps=6", "sampler.kind=random", "train.prompts=mine.jsonl",
                                "rewards=[{kind: reasoning, head: format}]", "eval.n_per_prompt=4"])
    assert (config.sampler.kind, config.sampler.steps, config.sampler.length, config.sampler.block_length) == \
        ("random", 6, 24, 8)
    assert config.rewards == (RewardConfig(kind="reasoning", head="format"),)
    assert config.train.prompts == "mine.jsonl" and config.train.eval_steps == (12,)
    assert config.eval.n_per_prompt == 4 and config.eval.steps == 12 and config.eval.metadata.endswith("heldout")


def test_a_resolved_text_config_round_trips(tmp_path):
    config = load_config(None, [*TEXT, "sampler.block_length=12", "sampler.steps=8", "eval.steps=4",
                                "train.eval_steps=[2, 16]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


@pytest.mark.parametrize("overrides", [
    ["sampler.block_length=1", "sampler.steps=24", "eval.steps=48", "train.eval_steps=[24]"],
    ["sampler.block_length=24", "sampler.steps=5", "eval.steps=7", "train.eval_steps=[1, 256]"],
    ["sampler.block_length=6", "sampler.steps=4", "eval.steps=8", "train.eval_steps=[4]"],
    ["algo.theta_likelihood=maskgrpo", "algo.inner_epochs=12"],
    ["algo.theta_likelihood=d1"], ["algo.theta_likelihood=unigrpo"],
    ["schedule_policy.learn=[remask_ratio, temperature, remask_temperature]", "sampler.kind=random"],
])
def test_text_configs_that_divide_evenly_resolve(overrides):
    assert load_config(None, [*TEXT, *overrides]).model.family == "masked_text"


REFUSED = {
    "block not dividing length": ([*TEXT, "sampler.block_length=5"], "block_length 5 does not divide"),
    "block longer than length": ([*TEXT, "sampler.block_length=48"], "block_length 48 does not divide"),
    "length not divided": ([*TEXT, "sampler.length=20"], "block_length 8 does not divide sampler.length 20"),
    "sampler steps": ([*TEXT, "sampler.steps=10"], "sampler.steps 10 cannot be split evenly between the sampler's 3"),
    "sampler steps, two blocks": ([*TEXT, "sampler.block_length=12", "sampler.steps=9", "eval.steps=8",
                                   "train.eval_steps=[8]"], "sampler.steps 9 .* 2 blocks"),
    "eval steps": ([*TEXT, "eval.steps=4"], "eval.steps 4 cannot be split"),
    "train eval steps": ([*TEXT, "train.eval_steps=[12, 6, 8]"], "train.eval_steps 8 cannot be split"),
    "length on an image family": (["sampler.length=24"], "for the masked_text family"),
    "block length on an image family": (["sampler.block_length=8"], "for the masked_text family"),
    "length on a flow family": (["model.kind=tiny_flow", "sampler.length=24"], "for the masked_text family"),
    "format head on shapes": (["rewards=[{kind: shapes, head: format}]"], "kind shapes has heads strict and partial"),
    "strict head on reasoning": ([*TEXT, "rewards=[{kind: reasoning, head: strict}]"],
                                 "kind reasoning has heads correct and format, not strict"),
    "head on clip": (["rewards=[{kind: clip, head: correct, path: /models/clip}]"],
                     "head is for kinds shapes and reasoning, not clip"),
    "shapes reward on text": ([*TEXT, "rewards=[{kind: shapes}]"],
                              r"rewards.0 \(shapes_strict\) scores images, but family masked_text makes texts"),
    "second reward of the wrong kind": ([*TEXT, "rewards=[{kind: reasoning}, {kind: shapes, head: partial}]"],
                                        r"rewards.1 \(shapes_partial\) scores images"),
    "reasoning reward on images": (["rewards=[{kind: reasoning}]"], "scores texts, but family masked_image"),
    "image sampler on text": ([*TEXT, "sampler.kind=maskgit"], "not a sampler of family masked_text"),
    "text sampler on images": (["sampler.kind=low_confidence"], "not a sampler of family masked_image"),
    "text estimator on images": (["algo.theta_likelihood=d1"], "d1 is not offered by family masked_image"),
    "guidance knob on text": ([*TEXT, "schedule_policy.learn=[guidance]"], "has no knob 'guidance'"),
    "maskgrpo with one epoch": ([*TEXT, "algo.theta_likelihood=maskgrpo"], "inner_epochs"),
    "zero length": ([*TEXT, "sampler.length=0"], "config sampler.length"),
}


@pytest.mark.parametrize("overrides, message", REFUSED.values(), ids=REFUSED.keys())
def test_inconsistent_text_configs_are_one_line_input_errors(overrides, message):
    with pytest.raises(InputError, match=message) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize("override", ["sampler.block_length=null", "sampler.length=null"])
def test_a_null_length_or_block_length_on_a_text_config_resolves_or_is_an_input_error(override):
    try:
        config = load_config(None, [*TEXT, override])
    except InputError as exc:
        assert "\n" not in str(exc)
    else:  # if null comes to mean something (one block, say), the text family must be able to decode with it
        assert MaskedTextFamily(config).hand_schedule(config.sampler.steps).shape[0] == config.sampler.steps
