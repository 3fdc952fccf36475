import json

import numpy as np
import pytest

from cogrpo.data import geneval as G
from cogrpo.data.prompts import colors, counting, position, single_object
from cogrpo.proto.errors import InputError

RECORDS = [single_object("circle"), colors("red", "square"), counting(3, "triangle"),
           position("square", "above", "circle", "blue", "green")]


def test_metadata_round_trip(tmp_path):
    path = tmp_path / "m.jsonl"
    G.write_jsonl(path, RECORDS)
    assert G.read_metadata(path, "shapes") == RECORDS
    # one JSON object per line, exactly GenEval's keys
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"tag", "include", "prompt"}


@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ("\n\n", "empty"),
    ('{"tag": "colors"\n', ":1: malformed JSON"),
    ('{"tag": "colors", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}\n', "unknown class"),
    ('{"tag": "nope", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}\n', "unknown tag"),
    ('{"tag": "colors", "include": [{"class": "circle", "count": 0}], "prompt": "a photo of a circle"}\n', "count"),
    ('{"tag": "colors", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a cat"}\n', "unknown word"),
    ('{"tag": "position", "include": [{"class": "circle", "count": 1, "position": ["near", 0]}], '
     '"prompt": "a photo of a circle"}\n', "position"),
    ("[1, 2]\n", "JSON object"),
])
def test_bad_metadata_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "m.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        G.read_metadata(path, "shapes")


def test_non_utf8_and_missing_metadata(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="UTF-8"):
        G.read_metadata(path, "shapes")
    with pytest.raises(InputError, match="not found"):
        G.read_metadata(tmp_path / "missing.jsonl", "shapes")


def test_generation_layout_is_genevals(tmp_path):
    images = [np.full((2, 16, 16, 3), 255, np.uint8) for _ in RECORDS]
    out = tmp_path / "gen"
    G.write_generation(out, RECORDS, images)
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002", "00003"]
    assert (out / "00002" / "metadata.jsonl").read_text() == json.dumps(RECORDS[2]) + "\n"
    assert sorted(p.name for p in (out / "00002" / "samples").iterdir()) == ["00000.png", "00001.png"]
    back = G.read_generation(out, "shapes")
    assert [r for r, _ in back] == RECORDS
    assert np.array_equal(G.load_image(back[0][1][1]), images[0][1])


def test_generation_refuses_a_non_empty_folder_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        G.write_generation(out, RECORDS, [np.zeros((1, 16, 16, 3), np.uint8)] * len(RECORDS))
    with pytest.raises(ValueError):  # mismatched lengths fail before anything is renamed into place
        G.write_generation(tmp_path / "gen2", RECORDS, [np.zeros((1, 16, 16, 3), np.uint8)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]


def test_summary_is_the_mean_over_tasks_of_task_accuracy():
    rows = ([{"tag": "colors", "correct": True}] * 3 + [{"tag": "colors", "correct": False}]
            + [{"tag": "position", "correct": False}] * 10)
    s = G.summarize(rows)
    assert s["by_task"] == {"colors": 0.75, "position": 0.0}
    assert s["overall"] == pytest.approx(0.375)  # not the per-image mean (3/14)
