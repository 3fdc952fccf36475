"""Real prompts for real image models, through the CLI: a free-text prompt file trains and evaluates a tiny
random-weight aMUSEd (its rewards are the scores), GenEval metadata of COCO classes is generated in GenEval's layout
for it and refused for the shapes world, and hostile prompt files end in one clipped line and exit 2."""

import json

import numpy as np
import pytest

from cogrpo.cli import main
from cogrpo.data.jsonl import MAX_LINE
from tests.cli_input import fails, jsonl

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = "a photo of a dog on a bench\n\n  an astronaut riding a horse, oil painting  \r\na bowl of ramen\n"
COCO = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
     "prompt": "a photo of two clocks"},
    {"tag": "position", "include": [{"class": "sink", "count": 1},
                                    {"class": "cow", "count": 1, "position": ["left of", 0]}],
     "prompt": "a photo of a cow left of a sink"},
    {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "pink"},
                                      {"class": "bus", "count": 1, "color": "orange"}],
     "prompt": "a photo of a pink car and an orange bus"},
]


def sets(*overrides: str) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def amused(folder, clip_folder) -> list[str]:
    """A tiny aMUSEd (16 px images: the least an image folder to score may hold) with the tiny CLIP as its one
    reward, in one process, tiny sizes."""
    return sets("model.kind=amused", f"model.path={folder}", "runtime=local", "threads=1", "sampler.steps=2",
                "sampler.batch_size=4", "eval.steps=2", "train.eval_steps=[2]",
                f"rewards=[{{kind: clip, path: {clip_folder}}}]")


@pytest.fixture(scope="module")
def folder(tiny_amused):
    return tiny_amused(sample_size=4, vq_levels=3)


def test_a_free_text_prompt_file_trains_and_evaluates_a_tiny_amused(folder, tiny_clip_folder, tmp_path, capsys):
    prompts, run = tmp_path / "prompts.txt", tmp_path / "run"
    prompts.write_text(PROMPTS)
    common = amused(folder, tiny_clip_folder)
    reward = f"reward/clip_{tiny_clip_folder.name}"
    assert main(["train", "--run-dir", str(run), *common,
                 *sets(f"train.prompts={prompts}", f"train.eval_metadata={{free: {prompts}}}", "train.iterations=2",
                       "train.eval_every=2", "train.checkpoint_every=2", "algo.group_size=2",
                       "algo.prompts_per_iteration=2", "algo.minibatch=4")]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2] and all(np.isfinite(r[reward]) for r in rows)
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["final_eval"]
    assert [(r["split"], np.isfinite(r[reward])) for r in final] == [("free", True)]
    assert "overall" not in final[0]  # GenEval's judge knows only the shapes world: the rewards are the scores

    assert main(["eval", "--checkpoint", str(run), "--metadata", str(prompts), "--json", *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 3 and "overall" not in result
    assert result[reward] == final[0][reward]  # the run's averaged model and learned schedule, the same seeds
    assert main(["eval", "--checkpoint", str(run), "--metadata", str(prompts), *common]) == 0
    assert capsys.readouterr().out.splitlines() == ["3 images", f"rewards: clip_{tiny_clip_folder.name} "
                                                                f"{result[reward]:.3f}"]


def test_coco_metadata_is_generated_in_genevals_layout_for_amused(folder, tiny_clip_folder, tmp_path, capsys):
    metadata, outdir = tmp_path / "coco.jsonl", tmp_path / "gen"
    metadata.write_text("".join(json.dumps(record) + "\n" for record in COCO))
    common = amused(folder, tiny_clip_folder)
    assert main(["generate", "--metadata", str(metadata), "--outdir", str(outdir), "--n-per-prompt", "2",
                 *common]) == 0
    assert sorted(p.name for p in outdir.iterdir()) == ["00000", "00001", "00002", "00003"]
    for index, record in enumerate(COCO):  # what GenEval's evaluate_images.py reads
        assert (outdir / f"{index:05d}" / "metadata.jsonl").read_text() == json.dumps(record) + "\n"
        assert sorted(p.name for p in (outdir / f"{index:05d}" / "samples").iterdir()) == ["00000.png", "00001.png"]
    capsys.readouterr()
    assert main(["eval", "--images", str(outdir), "--json", *common]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["images"] == 8 and np.isfinite(scored[f"reward/clip_{tiny_clip_folder.name}"])


@pytest.mark.parametrize("argv", [
    ["generate", "--metadata", "coco.jsonl", "--outdir", "out"],
    ["eval", "--metadata", "coco.jsonl"],
    ["train", *sets("runtime=local", "train.prompts=coco.jsonl")],
])
def test_coco_metadata_is_refused_for_the_shapes_world(argv, workdir, capfd):
    fails(argv, "coco.jsonl:1: unknown class 'bench' for the shapes world", workdir, capfd,
          {"coco.jsonl": jsonl(*COCO)})


@pytest.mark.parametrize("name, content, message", [
    ("p.txt", b"", "prompt file is empty: p.txt"),
    ("p.txt", b"\n \r\n\n", "prompt file is empty: p.txt"),
    ("p.txt", b"a photo of a dog\n\xff\xfe\x00\x81binary\n", "prompt file is not UTF-8 text: p.txt"),
    ("p.txt", b"a photo of a dog\na cat\x00\x07 on a mat\n", "p.txt:2: prompt holds '\\x00', a control character"),
    ("p.txt", b"a" * (MAX_LINE + 1) + b"\n", f"p.txt:1: a line is at most {MAX_LINE:,} characters"),
    ("p.txt", b"dog " * 600 + b"\n", "p.txt:1: a prompt is at most 2,000 characters, this one 2,399"),
    ("p.jsonl", b"", "metadata file is empty: p.jsonl"),
    ("p.jsonl", jsonl({"text": "a photo of a dog"}), "p.jsonl:1: a line needs a string 'prompt'"),
    ("p.jsonl", jsonl({"prompt": "a dog"}, {"prompt": ["a", "cat"]}), "p.jsonl:2: a line needs a string 'prompt'"),
    ("p.jsonl", jsonl({"prompt": "  "}), "p.jsonl:1: empty prompt"),
    ("p.jsonl", jsonl({**COCO[0], "include": [{"class": "x" * 500, "count": 1}]}),
     "p.jsonl:1: class must be a name of 1 to 100 characters"),
])
def test_hostile_prompt_files_for_a_real_model_are_one_clipped_line(name, content, message, workdir, capfd):
    """Read before the model is built: the aMUSEd folder need not exist for the file to be refused."""
    err = fails(["generate", "--metadata", name, "--outdir", "out", *sets("model.kind=amused", "model.path=nowhere")],
                message, workdir, capfd, {name: content})
    assert len(err.strip()) < 300  # the echoed input is clipped


def test_a_sample_prompt_for_a_real_model_is_bounded(workdir, capfd):
    real = sets("model.kind=amused", "model.path=nowhere")
    err = fails(["sample", "--prompt", "dog " * 600, "--out", "x.png", *real], "a prompt is at most 2,000", workdir,
                capfd)
    assert len(err.strip()) < 300
    fails(["sample", "--prompt", "a dog\x1b[2J", "--out", "x.png", *real], "a control character", workdir, capfd)


def test_eval_results_are_refused_for_a_real_model_which_has_no_judge_verdicts(workdir, capfd):
    fails(["eval", "--metadata", "p.txt", "--results", "r.jsonl", *sets("model.kind=amused", "model.path=nowhere")],
          "--results writes the shapes judge's verdicts", workdir, capfd, {"p.txt": b"a photo of a dog\n"})
