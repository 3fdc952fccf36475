"""`cogrpo export`: a tiny random aMUSEd trained two iterations through the CLI, exported with AmusedPipeline's
save_pretrained and loaded back by diffusers' own AmusedPipeline.from_pretrained; a tiny Meissonic run; and the bad
input it refuses."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AmusedPipeline, UVit2DModel

from cogrpo.cli import main
from cogrpo.data.weights import load_tensors
from cogrpo.models.checkpoint import build_model, save_model
from cogrpo.models.tiny_mdm import TinyMDM
from cogrpo.proto.config import dump_config, load_config
from cogrpo.proto.layout import RunLayout
from tests.cli_input import fails
from tests.models.test_meissonic import make_folder  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke-cpu.yaml")


@pytest.fixture(scope="module")
def base(tiny_amused):
    return tiny_amused(sample_size=4, vq_levels=3)  # 16 px: what the shapes reward reads


@pytest.fixture(scope="module")
def run(base, tiny_clip_folder, tmp_path_factory):
    """Two iterations of Co-GRPO on the tiny aMUSEd, a checkpoint after each; theta's moving average is kept.
    CLIPScore, not the shapes reward, which scores every random-model image 0 and so leaves nothing to learn."""
    run = tmp_path_factory.mktemp("amused_run") / "run"
    rewards = json.dumps([{"kind": "clip", "path": str(tiny_clip_folder), "weight": 1.0}])
    overrides = ["runtime=local", "model.kind=amused", f"model.path={base}", "model.checkpoint=null", "threads=1",
                 f"rewards={rewards}",
                 "train.iterations=2", "train.checkpoint_every=1", "train.eval_metadata={}", "sampler.steps=4",
                 "algo.group_size=2", "algo.prompts_per_iteration=2", "algo.minibatch=4", "sampler.batch_size=4"]
    assert main(["train", "--config", SMOKE, "--run-dir", str(run), *[a for o in overrides for a in ("--set", o)]]) == 0
    return run


def transformer_state(folder: Path) -> dict[str, torch.Tensor]:
    pipe = AmusedPipeline.from_pretrained(folder, local_files_only=True)
    assert isinstance(pipe.transformer, UVit2DModel)
    return pipe.transformer.state_dict()


def trained(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The exported model of a checkpoint (theta's average here), named as the transformer names them."""
    tensors = load_tensors(checkpoint / "averaged_model.safetensors")[0]
    return {name.removeprefix("transformer."): tensor for name, tensor in tensors.items()}


def test_a_run_exports_its_latest_averaged_transformer_in_amused_pipelines_layout(run, base, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    loaded, expected = transformer_state(out), trained(run / "checkpoints" / "iter_000002")
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], v) for k, v in expected.items())
    # the merge is what the export is for: the trained weights are not the base folder's
    assert any(not torch.equal(loaded[k], v) for k, v in transformer_state(base).items())
    pipe = AmusedPipeline.from_pretrained(out, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 16, 16, 3)
    assert not list(tmp_path.glob(".*partial"))


def test_one_checkpoint_folder_of_a_run_exports_that_iteration(run, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()  # an empty folder is taken
    assert main(["export", "--checkpoint", str(run / "checkpoints" / "iter_000001"), "--out", str(out)]) == 0
    loaded = transformer_state(out)
    assert all(torch.equal(loaded[k], v) for k, v in trained(run / "checkpoints" / "iter_000001").items())
    assert any(not torch.equal(loaded[k], v) for k, v in trained(run / "checkpoints" / "iter_000002").items())


def handmade_run(folder: Path, config, model) -> Path:
    """A run directory as training leaves one, written through RunLayout: its config and one checkpoint of
    `model`."""
    layout = RunLayout(folder)
    folder.mkdir()
    layout.marker.touch()
    layout.config.write_text(dump_config(config))
    save_model(model, layout.staging(1) / "model.safetensors")
    layout.commit(1, {"runtime": config.runtime})
    return folder


def test_a_meissonic_run_exports_its_snapshot_with_the_trained_transformer(make_folder, tmp_path):
    """No Meissonic pipeline in diffusers: the snapshot's own files, with the transformer saved over it, which our
    loader (through the folder's class) reads back."""
    folder = make_folder()
    config = load_config(None, ["model.kind=meissonic", f"model.path={folder}", "model.trust_folder_code=true",
                                "model.resolution=16"])
    model = build_model(config.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    out = tmp_path / "out"
    assert main(["export", "--checkpoint", str(handmade_run(tmp_path / "run", config, model)), "--out", str(out)]) == 0
    assert (out / "src" / "transformer.py").read_bytes() == (folder / "src" / "transformer.py").read_bytes()
    back = build_model(config.model.model_copy(update={"path": str(out)}))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in back.state_dict().items())


def test_bad_input_is_one_line_and_writes_nothing(run, workdir, capfd):
    shutil.copytree(run, workdir / "run")
    shutil.copytree(run, workdir / "damaged")
    (workdir / "damaged" / "checkpoints" / "iter_000002" / "averaged_model.safetensors").write_bytes(b"\0" * 64)
    handmade_run(workdir / "tiny", load_config(None), TinyMDM(load_config(None).model.arch))
    partial = workdir / "run" / "checkpoints" / "iter_000003"
    partial.mkdir()
    for argv, message in [
        (["--checkpoint", "tiny"], "model.kind tiny_mdm has no pipeline folder to export; the kinds that have one: "
                                   "amused, meissonic"),
        (["--checkpoint", "damaged"], "averaged_model.safetensors is not a valid safetensors file"),
        (["--checkpoint", "nowhere"], "nowhere is neither a cogrpo run directory nor one of its checkpoint folders"),
        (["--checkpoint", "run/checkpoints"], "neither a cogrpo run directory"),
        (["--checkpoint", str(partial)], "is not a complete checkpoint (no state.json)"),
        (["--checkpoint", "run", "--out", "run"], "--out 'run' exists and is not empty"),
        (["--checkpoint", "run", "--set", "model.path=gone"], "aMUSEd folder not found: gone"),
    ]:
        argv = ["export", *argv] if "--out" in argv else ["export", *argv, "--out", "out"]
        fails(argv, message, workdir, capfd)
