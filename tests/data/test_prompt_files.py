"""The prompt-file readers: plain text, prompt JSONL and GenEval metadata, read for the shapes world (its vocabulary,
classes and templates) or an open one (a model with its own text encoder); hostile files are one clipped line."""

import json

import pytest

from cogrpo.data import jsonl as J
from cogrpo.data import prompts as P
from cogrpo.data.records import read_records
from cogrpo.proto.errors import InputError

BENCH = {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}
TWO_CLOCKS = {"tag": "counting", "include": [{"class": "clock", "count": 2}],
              "exclude": [{"class": "clock", "count": 3}], "prompt": "a photo of two clocks"}


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def refused(spec: str, world: str, message: str) -> str:
    with pytest.raises(InputError, match=message) as info:
        read_records(spec, world)
    text = str(info.value)
    assert "\n" not in text and len(text) < 300, text  # one line, the echoed input clipped
    return text


def test_a_plain_text_file_is_one_prompt_a_line_for_an_open_world(tmp_path):
    path = write(tmp_path, "p.txt", "a dog on a bench\n\n   \n  an astronaut, riding a horse \r\nramen\n")
    assert read_records(path, "open") == [{"prompt": "a dog on a bench"}, {"prompt": "an astronaut, riding a horse"},
                                          {"prompt": "ramen"}]


def test_the_shapes_world_reads_plain_prompts_as_the_metadata_its_judge_scores(tmp_path):
    path = write(tmp_path, "p.txt", "a photo of a red circle\na photo of two squares\n")
    assert read_records(path, "shapes") == [P.colors("red", "circle"), P.counting(2, "square")]
    refused(write(tmp_path, "dog.txt", "a photo of a circle\na photo of a dog\n"), "shapes", r"dog.txt:2: unknown word")
    refused(write(tmp_path, "free.txt", "a red circle\n"), "shapes", r"free.txt:1: prompt must start with")


def test_jsonl_holds_prompt_lines_and_geneval_metadata_of_any_class_for_an_open_world(tmp_path):
    lines = [{"prompt": "a dog", "category": "animals"}, BENCH, TWO_CLOCKS, P.colors("red", "circle")]
    path = write(tmp_path, "p.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    assert read_records(path, "open") == [{"prompt": "a dog"}, BENCH, TWO_CLOCKS, P.colors("red", "circle")]
    # the shapes world cannot score a COCO class, nor take a word outside its vocabulary
    refused(path, "shapes", r"p.jsonl:1: unknown word 'dog'")
    refused(write(tmp_path, "coco.jsonl", json.dumps(BENCH) + "\n"), "shapes",
            r"coco.jsonl:1: unknown class 'bench' for the shapes world, whose judge scores only square, circle")
    assert read_records("builtin:heldout", "open") == read_records("builtin:heldout", "shapes")


def test_open_world_metadata_is_still_genevals_form(tmp_path):
    for record, message in [({**BENCH, "tag": "nope"}, "unknown tag 'nope'"),
                            ({**BENCH, "include": [{"class": "", "count": 1}]}, "class must be a name"),
                            ({**BENCH, "include": [{"class": "bench", "count": 9}]}, "count must be an integer"),
                            ({**BENCH, "include": [{"class": "bench", "count": 1, "color": 3}]}, "color must be"),
                            ({**BENCH, "include": [{"class": "bench", "count": 1, "position": ["near", 0]}]},
                             "position must be"),
                            ({**BENCH, "prompt": "a photo of a circle"}, "the prompt 'a photo of a circle' disagrees")]:
        refused(write(tmp_path, "m.jsonl", json.dumps(record) + "\n"), "open", f"m.jsonl:1: {message}")


@pytest.mark.parametrize("name, content, message", [
    ("p.txt", b"", "prompt file is empty"),
    ("p.jsonl", b"\n\n", "metadata file is empty"),
    ("p.txt", b"a" * (J.MAX_LINE + 1), f"p.txt:1: a line is at most {J.MAX_LINE:,} characters"),
    ("p.jsonl", b'{"prompt": "' + b"a" * J.MAX_LINE + b'"}', f"p.jsonl:1: a line is at most {J.MAX_LINE:,}"),
    ("p.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff", "prompt file is not UTF-8 text"),
    ("p.txt", "a dog\u0000 on a bench\n".encode(), r"p.txt:1: prompt holds '\\x00', a control character"),
    ("p.txt", b"dog " * 1000, "p.txt:1: a prompt is at most 2,000 characters, this one 3,999"),
    ("p.jsonl", b'{"caption": "a dog"}\n', "p.jsonl:1: a line needs a string 'prompt'"),
    ("p.jsonl", b'{"prompt": null}\n', "p.jsonl:1: a line needs a string 'prompt'"),
    ("p.jsonl", b'"a dog"\n', "p.jsonl:1: a metadata record must be a JSON object"),
    ("p.jsonl", json.dumps({"prompt": "x" * 5000}).encode(), "p.jsonl:1: a prompt is at most 2,000"),
    ("p.jsonl", json.dumps({"prompt": "a \udcff dog"}).encode(), "unpaired surrogate"),
])
def test_hostile_prompt_files_are_one_clipped_line(tmp_path, name, content, message):
    refused(write(tmp_path, name, content), "open", message)


def test_a_file_past_the_size_or_line_bound_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = write(tmp_path, "p.txt", "a dog\n" * 10)
    monkeypatch.setattr(J, "MAX_BYTES", 59)
    refused(path, "open", "p.txt is 60 bytes, at most 59")
    monkeypatch.setattr(J, "MAX_BYTES", 60)
    monkeypatch.setattr(J, "MAX_LINES", 9)
    refused(path, "open", "p.txt has more than 9 lines")
    monkeypatch.setattr(J, "MAX_LINES", 10)
    assert len(read_records(path, "open")) == 10


def test_the_shapes_vocabulary_check_clips_what_it_echoes():
    with pytest.raises(InputError, match="unknown word") as info:
        P.tokenize("a photo of a " + "x" * 50_000)
    assert len(str(info.value)) < 500
