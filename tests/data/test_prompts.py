import json
import random
from pathlib import Path

import pytest

from cogrpo.data import prompts as P
from cogrpo.data.geneval import BUILTIN_DIR
from cogrpo.proto.errors import InputError


def test_unknown_word_is_a_clear_error_not_an_unk():
    with pytest.raises(InputError, match="unknown word 'dog'"):
        P.tokenize("a photo of a dog")


def test_too_long_and_empty_prompts_are_errors():
    with pytest.raises(InputError, match="at most"):
        P.tokenize(" ".join(["a"] * (P.MAX_WORDS + 1)))
    with pytest.raises(InputError, match="empty"):
        P.tokenize("   ")


def test_templates_read_as_geneval_examples():
    assert P.colors("red", "circle")["prompt"] == "a photo of a red circle"
    assert P.counting(3, "square")["prompt"] == "a photo of three squares"
    assert P.two_object("circle", "triangle")["prompt"] == "a photo of a circle and a triangle"
    pos = P.position("square", "left of", "circle", "blue", "red")
    assert pos["prompt"] == "a photo of a blue square left of a red circle"
    # GenEval: the reference object comes first and the other carries [relation, index of reference]
    assert pos["include"] == [{"class": "circle", "count": 1, "color": "red"},
                              {"class": "square", "count": 1, "color": "blue", "position": ["left of", 0]}]
    assert P.counting(2, "circle")["exclude"] == [{"class": "circle", "count": 3}]


@pytest.mark.parametrize("task", P.TASKS)
def test_parse_prompt_inverts_every_template(task):
    rng = random.Random(task)
    for _ in range(50):
        record = P.random_record(task, rng)
        assert P.parse_prompt(record["prompt"]) == record


def test_parse_rejects_prompts_outside_the_templates():
    with pytest.raises(InputError, match="template"):
        P.parse_prompt("a photo of a red red circle")
    with pytest.raises(InputError, match="start with"):
        P.parse_prompt("a red circle")


def test_train_split_never_contains_a_heldout_composition():
    records = P.sample_records(random.Random(0), 2000, split="train")
    assert not any(P.is_heldout(r) for r in records)
    assert {r["tag"] for r in records} == set(P.TASKS)


def test_heldout_split_holds_out_every_compositional_record():
    records = P.sample_records(random.Random(0), 600, split="heldout")
    for r in records:
        assert P.is_heldout(r) or not P.compositions(r)
    compositional = [r for r in records if r["tag"] in ("colors", "counting", "position", "color_attr")]
    assert compositional and all(P.is_heldout(r) for r in compositional)


@pytest.mark.parametrize("name", sorted(P.BUILTIN_METADATA))
def test_shipped_metadata_files_match_their_generator(name):
    lines = Path(BUILTIN_DIR / f"{name}.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == P.builtin_metadata(name)
    assert {json.loads(line)["tag"] for line in lines} == set(P.TASKS)
