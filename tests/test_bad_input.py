"""Bad input through the CLI: one line on stderr naming the problem, exit code 2, and nothing written (no run
directory, no output file) in the folder the command ran in (tests/cli_input.py)."""

import io
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from cogrpo.data.prompts import colors, single_object
from cogrpo.models.tiny_mdm import TinyMDM
from cogrpo.proto.config import TinyArch
from tests.cli_input import fails, jsonl

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "smoke-cpu.yaml")
FLOW = str(Path(__file__).resolve().parents[1] / "configs" / "flow-smoke-cpu.yaml")
TEXT = str(Path(__file__).resolve().parents[1] / "configs" / "text-smoke-cpu.yaml")
# six levels of nine aliases each: 9^6 values once expanded, from a few hundred bytes
ALIAS_BOMB = ("a: &a [" + ", ".join(["x"] * 9) + "]\n" + "".join(f"{n}: &{n} [{', '.join([f'*{q}'] * 9)}]\n"
              for q, n in zip("abcd", "bcde")) + "f: [" + ", ".join(["*e"] * 9) + "]\n").encode()
TRAIN = ["train", "--config", CONFIG, "--run-dir", "run", "--set", "runtime=local"]
GOOD = jsonl(single_object("square"), colors("red", "circle"))


@pytest.mark.parametrize("argv, message, files", [
    (["eval", "--config", "c.yaml"], "unknown config key 'sampler.stepz'", {"c.yaml": b"sampler:\n  stepz: 3\n"}),
    (["eval", "--set", "sampler.steps=many"], "config sampler.steps: Input should be a valid integer", {}),
    (["eval", "--set", "algo.lr=.inf"], "config algo.lr: Input should be a finite number", {}),
    (["eval", "--set", "metrics.port=70000"], "config metrics.port", {}),
    (["eval", "--set", "sampler.steps"], "--set expects key=value", {}),
    (["eval", "--set", "sampler.steps=" + "[" * 5000], "--set sampler.steps: cannot parse value", {}),
    (["eval", "--config", "c.yaml"], "config file is not UTF-8 text", {"c.yaml": b"seed: \xff\n"}),
    (["eval", "--config", "c.yaml"], "config file c.yaml line 2: not valid YAML", {"c.yaml": b"seed: 1\n- item\n"}),
    (["eval", "--config", "missing.yaml"], "config file not found: missing.yaml", {}),
    (["eval", "--config", "c.yaml"], "config file c.yaml: line 3: key 'algo' appears twice",
     {"c.yaml": b"algo: {mode: grpo}\nseed: 1\nalgo: {mode: cogrpo}\n"}),
    (["eval", "--config", "c.yaml"], "config file c.yaml: more than 100000 values once its aliases are expanded",
     {"c.yaml": ALIAS_BOMB}),
    (["eval", "--set", "algo.steps.mode=window", "--set", "algo.steps.window=9"], "exceeds sampler.steps 8", {}),
    (["eval", "--set", "rewards=[]"], "at least one reward is needed", {}),
    (["eval", "--set", "algo.rollouts_per_prompt=4"], "rollouts_per_prompt 4 is below group_size 8", {}),
    (["eval", "--set", "algo.candidate_prompts=6"], "candidate_prompts 6 is below prompts_per_iteration 8", {}),
    (["eval", "--set", "algo.token_average=token", "--set", "algo.ratio=step_product"],
     "token_average: token needs", {}),
    (["eval", "--config", FLOW, "--set", "algo.steps.window=9"], "exceeds sampler.steps 8", {}),
    (["eval", "--config", FLOW, "--set", "sampler.noise_level=0"], "sampler.noise_level 0 makes the SDE steps", {}),
    (["eval", "--config", FLOW, "--set", "sampler.kind=maskgit"], "not a sampler of family flow_image (flow)", {}),
    (["eval", "--config", FLOW, "--set", "algo.theta_likelihood=maskgrpo", "--set", "algo.inner_epochs=2"],
     "not offered by family flow_image", {}),
    (["eval", "--set", "algo.theta_likelihood=maskgrpo"], "with inner_epochs 1 its one rate is 0.999", {}),
    (["eval", "--set", "sampler.kind=flow"], "sampler.kind flow is not a sampler of family masked_image", {}),
    (["eval", "--set", "algo.mode=grpo", "--set", "algo.theta_objective=nft"],
     "algo.theta_objective nft is not offered by family masked_image (clipped)", {}),
    (["eval", "--config", FLOW, "--set", "algo.steps.mode=none"], "algo.steps.mode none samples no step", {}),
    (["eval", "--set", "model.resolution=512"], "resolution is only for kinds meissonic, sd3 and flux", {}),
    (["eval", "--config", FLOW, "--set", "model.kind=sd3", "--set", "model.path=/m", "--set",
      "model.embedded_guidance=3"], "checkpoint builtin:tiny_flow is a shipped tiny model's, not sd3 weights", {}),
    (["eval", "--config", FLOW, "--set", "model.kind=sd3", "--set", "model.path=/m", "--set", "model.checkpoint=null",
      "--set", "model.embedded_guidance=3"], "embedded_guidance is only for kind flux", {}),
    (["eval", "--set", "rewards=[{kind: shapes, head: strict}, {kind: shapes, head: strict, weight: 2}]"],
     "rewards: two terms are both named 'shapes_strict'", {}),
    (["eval", "--set", "seed=" + "9" * 30], "config seed: Input should be less than 4294967296", {}),
    (["eval", "--set", "train.eval_steps=[0]"], "config train.eval_steps.0: Input should be greater than or equal", {}),
    (["eval", "--set", "train.eval_steps=[]"], "config train.eval_steps: ", {}),
    (["eval", "--set", "schedule_policy.time_features=7"], "config schedule_policy.time_features: Input should be a "
     "multiple of 2", {}),
    (["eval", "--steps", "1000"], "--steps must be at most 256, got 1000", {}),
    (["eval", "--seed", "9" * 30], "--seed must be in [0, 4294967296)", {}),
    (["eval", "--set", "sampler.shared_noise=true"], "the maskgit sampler starts from no noise", {}),
    (["eval", "--config", FLOW, "--set", "sampler.shared_noise=true", "--set", "sampler.batch_size=12"],
     "sampler.batch_size (12) to be a multiple of the samples per prompt (8)", {}),
])
def test_bad_configs(argv, message, files, workdir, capfd):
    err = fails(argv, message, workdir, capfd, files)
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("content, message", [
    (b"", "metadata file is empty: m.jsonl"),
    (b"\n  \n", "metadata file is empty: m.jsonl"),
    (GOOD[:-1] + b"\xff\n", "metadata file is not UTF-8 text: m.jsonl"),
    (GOOD + b'{"tag": "colors", \n', "m.jsonl:3: malformed JSON"),
    (GOOD + b"[1, 2]\n", "m.jsonl:3: a metadata record must be a JSON object"),
    (jsonl({**single_object("square"), "prompt": "a photo of a dog"}), "m.jsonl:1: unknown word 'dog'"),
    (jsonl({**single_object("square"), "tag": "dancing"}), "m.jsonl:1: unknown tag 'dancing'"),
])
def test_bad_metadata_files(content, message, workdir, capfd):
    fails(["generate", "--metadata", "m.jsonl", "--outdir", "out"], message, workdir, capfd, {"m.jsonl": content})


TASK = {"task": "arith", "prompt": "347+58=", "answer": "405"}


@pytest.mark.parametrize("content, message", [
    (jsonl(TASK, {**TASK, "answer": "404"}), "t.jsonl:2: the answer '404' does not solve '347+58='"),
    (jsonl({**TASK, "task": "poetry"}), "t.jsonl:1: unknown task 'poetry'"),
    (jsonl({**TASK, "prompt": "347 + 58"}), "t.jsonl:1: '347 + 58' is not a arith prompt"),
    (jsonl({"question": "How many?", "answer": "six"}), "t.jsonl:1: a GSM8K answer ends with '#### N'"),
    (b"[" * 200_000 + b"\n", "t.jsonl:1: a line is at most 100,000 characters"),
    (b'{"task": "arith", "prompt": "1+1=", "answer": ' + b"1" * 5000 + b"}\n", "t.jsonl:1: malformed JSON"),
])
def test_bad_task_files(content, message, workdir, capfd):
    fails(["eval", "--config", TEXT, "--tasks", "t.jsonl"], message, workdir, capfd, {"t.jsonl": content})
    fails([*TRAIN, "--config", TEXT, "--set", "train.prompts=t.jsonl"], message, workdir, capfd,
          {"t.jsonl": content})


@pytest.mark.parametrize("runtime", ["local", "ray"])  # ray: before any cluster starts (this takes no time)
def test_bad_training_prompts_leave_no_run_directory(runtime, workdir, capfd):
    fails([*TRAIN, "--set", f"runtime={runtime}", "--set", "train.prompts=m.jsonl"], "m.jsonl:1: malformed JSON",
          workdir, capfd, {"m.jsonl": b"not json\n"})


def test_bad_prompts(workdir, capfd):
    fails(["sample", "--prompt", "a photo of a dog", "--out", "x.png"], "unknown word 'dog'", workdir, capfd)
    fails(["sample", "--prompt", "", "--out", "x.png"], "empty prompt", workdir, capfd)
    fails(["sample", "--prompt", "a photo of a \udcff circle", "--out", "x.png"], "unknown word", workdir, capfd)


def tiny_mdm_file(arch: TinyArch, claimed: TinyArch, change=lambda name, tensor: tensor) -> bytes:
    """A TinyMDM checkpoint holding `arch`'s tensors (each through `change`) whose metadata says `claimed`."""
    tensors = {k: change(k, v.contiguous()) for k, v in TinyMDM(arch).state_dict().items()}
    return safetensors_bytes(tensors, metadata={"kind": "tiny_mdm", "arch": claimed.model_dump_json()})


def pickled() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    return buffer.getvalue()


SMALL = TinyArch(d_model=32, layers=1, heads=2, conv_layers=0)


@pytest.mark.parametrize("files, checkpoint, message", [
    ({}, "missing.safetensors", "checkpoint not found: missing.safetensors"),
    ({"m.pt": pickled()}, "m.pt", "checkpoint m.pt is not a valid safetensors file"),
    ({"m.safetensors": b"\x00" * 64}, "m.safetensors", "checkpoint m.safetensors is not a valid safetensors file"),
    ({"m.safetensors": tiny_mdm_file(SMALL, SMALL.model_copy(update={"d_model": 64}))}, "m.safetensors",
     "checkpoint m.safetensors does not fit the model: "),
    ({"m.safetensors": tiny_mdm_file(SMALL, SMALL.model_copy(update={"layers": 2}))}, "m.safetensors",
     "does not fit the model: missing tensor"),
    # a 4096-wide, 64-layer claim (tens of GB): refused by its tensors before anything is built
    ({"m.safetensors": tiny_mdm_file(SMALL, SMALL.model_copy(update={"d_model": 4096, "layers": 64, "heads": 8}))},
     "m.safetensors", "does not fit the model: missing tensor"),
    ({"m.safetensors": tiny_mdm_file(SMALL, SMALL, lambda k, v: v.to(torch.int8) if k == "head.weight" else v)},
     "m.safetensors", "checkpoint m.safetensors: head.weight holds int8, the model's is float32"),
    ({"m.safetensors": tiny_mdm_file(SMALL, SMALL, lambda k, v: v * float("nan"))}, "m.safetensors",
     "holds values that are not finite (NaN or infinite)"),
    ({"rundir": None}, "rundir", "run directory rundir has no complete checkpoint"),
])
def test_bad_checkpoints(files, checkpoint, message, workdir, capfd):
    fails(["eval", "--checkpoint", checkpoint], message, workdir, capfd, files)


@pytest.mark.parametrize("argv, message", [
    (["eval", "--steps", "x"], "argument --steps: invalid int value: 'x'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["generate", "--metadata", "m.jsonl"], "one of the arguments --outdir --out is required"),
    (["sample", "--prompt", "a photo of a circle", "--out", "x.png", "--n", "0"], "--n must be at least 1"),
    (["sample", "--prompt", "a photo of a circle", "--out", "x.jpg"], "--out must be a .png file"),
    (["eval", "--images", "imgs", "--steps", "4"], "--steps does not apply to --images"),
    (["eval", "--metadata", "m.jsonl", "--images", "imgs"], "not allowed with argument"),
    ([], "the following arguments are required: command"),
])
def test_bad_arguments(argv, message, workdir, capfd):
    fails(argv, message, workdir, capfd)


def test_a_taken_metrics_port_leaves_no_run_directory(workdir, capfd):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fails([*TRAIN, "--set", f"metrics.port={port}"], f"metrics endpoint 127.0.0.1:{port}:", workdir, capfd)


def test_impossible_resources_leave_no_run_directory(workdir, capfd):
    fails([*TRAIN, "--set", "runtime=ray", "--set", "cluster.learner_gpus=1"], "1 GPU needed, 0 in the cluster",
          workdir, capfd)


def test_a_checkpoint_an_actor_cannot_load_is_one_line(workdir, capfd):
    """The rollout actor's constructor finds it: the error crosses to the driver as itself, not a traceback."""
    fails([*TRAIN, "--set", "runtime=ray", "--set", "model.checkpoint=missing.safetensors"],
          "checkpoint not found: missing.safetensors", workdir, capfd)
