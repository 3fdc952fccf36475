"""The shipped GPU configs: they resolve on a CPU machine, their placement fits the GPUs they are written for, and
the one-GPU aMUSEd config runs end to end on CPU with its files swapped for tiny local models."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cogrpo.cli import main
from cogrpo.data.geneval import write_jsonl
from cogrpo.data.prompts import colors, two_object
from cogrpo.proto.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GPU_CONFIGS = ["amused-1gpu.yaml", "meissonic-8gpu.yaml", "meissonic-multinode.yaml", "sd3-1gpu.yaml",
               "flux-8gpu.yaml"]
GPUS_PER_NODE = 8


def pools(cluster) -> dict[str, tuple[int, float, dict[str, float]]]:
    """(actors, GPUs per actor, custom resources per actor) per role."""
    return {"rollout": (cluster.rollout_workers, cluster.rollout_gpus, cluster.rollout_resources),
            "reward": (cluster.reward_workers, cluster.reward_gpus, cluster.reward_resources),
            "learner": (cluster.learner_ranks, cluster.learner_gpus, cluster.learner_resources)}


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_configs_resolve_with_local_absolute_paths_and_every_worker_busy(name):
    config = load_config(CONFIGS / name)
    assert config.runtime == "ray" and config.model.kind in ("amused", "meissonic", "sd3", "flux")
    assert Path(config.model.path).is_absolute() and config.model.checkpoint is None
    assert all(Path(r.path).is_absolute() for r in config.rewards) and len(config.rewards) >= 2
    assert config.sampler.steps in config.train.eval_steps and config.eval.steps == config.sampler.steps
    batches = config.algo.rollout_prompts * config.algo.samples_per_prompt / config.sampler.batch_size
    assert batches == int(batches) and batches % config.cluster.rollout_workers == 0  # equal work per worker


def test_amused_1gpu_shares_one_gpu_and_keeps_amused_pipeline_defaults():
    config = load_config(CONFIGS / "amused-1gpu.yaml")
    c = config.cluster
    assert sum(n * gpus for n, gpus, _ in pools(c).values()) == 1
    assert c.weight_sync == "object_store"  # NCCL refuses two ranks on one GPU
    assert c.zero_stage == 2 and not any(resources for _, _, resources in pools(c).values())
    s = config.sampler
    assert (s.steps, s.guidance, s.remask_temperature, s.temperature) == (12, 9.0, 2.0, 1.0)


def test_smoke_1gpu_puts_every_role_on_one_gpu_with_nothing_to_download(tmp_path):
    """CI's GPU smoke run: the embedded default's model and reward, the GPU shared by fractions; on this CPU
    machine its placement is checked and, with the GPUs taken away, it trains in one process."""
    config = load_config(CONFIGS / "smoke-1gpu.yaml")
    c = config.cluster
    assert sum(n * gpus for n, gpus, _ in pools(c).values()) == 1 and c.weight_sync == "object_store"
    assert config.runtime == "ray" and config.model.checkpoint == "builtin:tiny_mdm"
    assert {r.kind for r in config.rewards} == {"shapes"}
    overrides = ["runtime=local", "cluster.rollout_gpus=0", "cluster.learner_gpus=0", "train.iterations=2",
                 "algo.prompts_per_iteration=2", "algo.group_size=4", "sampler.batch_size=8", "train.eval_every=2",
                 "train.eval_metadata={}"]
    run = tmp_path / "run"
    args = ["train", "--config", str(CONFIGS / "smoke-1gpu.yaml"), "--run-dir", str(run)]
    assert main(args + [arg for o in overrides for arg in ("--set", o)]) == 0
    assert [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_sd3_1gpu_shares_one_gpu_with_flow_grpos_sd35_sampling_and_mixgrpos_window():
    config = load_config(CONFIGS / "sd3-1gpu.yaml")
    c = config.cluster
    assert sum(n * gpus for n, gpus, _ in pools(c).values()) == 1 and c.weight_sync == "object_store"
    s, steps = config.sampler, config.algo.steps
    assert (s.steps, s.guidance, s.noise_level, s.time_shift, s.shared_noise) == (10, 3.5, 0.7, 3.0, True)
    assert (steps.mode, steps.window, steps.outside) == ("window", 4, "deterministic")
    assert config.model.resolution == 512 and config.sampler.batch_size % config.algo.group_size == 0


def one_node_one_gpu_per_actor(name: str, zero_stage: int):
    """The config, after checking that its actors fill one 8-GPU node, a GPU each, and its learner's ZeRO stage."""
    config = load_config(CONFIGS / name)
    c = config.cluster
    assert sum(n * gpus for n, gpus, _ in pools(c).values()) == GPUS_PER_NODE
    assert all(gpus == 1 and not resources for _, gpus, resources in pools(c).values())
    assert c.zero_stage == zero_stage and c.weight_sync == "collective"
    return config


def test_meissonic_8gpu_gives_every_actor_its_own_gpu_on_one_node():
    config = one_node_one_gpu_per_actor("meissonic-8gpu.yaml", zero_stage=2)
    m, s = config.model, config.sampler
    assert (m.kind, m.trust_folder_code, m.resolution) == ("meissonic", True, 1024)
    assert (s.steps, s.guidance, s.remask_temperature) == (48, 8.0, 2.0)  # Meissonic's 48 steps, CFG 9, (2, 0)


def test_flux_8gpu_gives_every_actor_its_own_gpu_with_mixgrpos_flux_setup():
    config = one_node_one_gpu_per_actor("flux-8gpu.yaml", zero_stage=3)
    s, steps, algo = config.sampler, config.algo.steps, config.algo
    assert (config.model.kind, config.model.embedded_guidance, s.guidance) == ("flux", 3.5, 0.0)
    assert (s.steps, s.noise_level, s.time_shift, s.shared_noise) == (25, 0.7, 3.0, True)
    assert (steps.mode, steps.window, steps.shift_every, steps.stride) == ("window", 4, 25, 1)
    assert (algo.group_size, algo.kl_beta, algo.clip_eps) == (12, 0.0, 1e-4)
    assert sorted(r.kind for r in config.rewards) == ["clip", "hps", "image_reward"]


def test_meissonic_multinode_puts_each_pool_on_its_own_full_nodes():
    config = load_config(CONFIGS / "meissonic-multinode.yaml")
    c = config.cluster
    assert c.zero_stage == 3 and c.weight_sync == "collective"
    nodes = {}
    labels = set()
    for role, (actors, gpus, resources) in pools(c).items():
        assert len(resources) == 1, role
        (label, share), = resources.items()
        labels.add(label)
        per_node = round(1 / share)
        assert per_node * share == pytest.approx(1)  # a node labelled {label: 1} holds exactly per_node actors
        assert per_node * gpus == GPUS_PER_NODE  # and they use its 8 GPUs, no more, none idle
        nodes[role] = math.ceil(actors / per_node)
        assert actors % per_node == 0, role
    assert len(labels) == 3 and nodes == {"rollout": 2, "reward": 1, "learner": 1}
    learner_node = next(iter(c.learner_resources))
    kuberay = (Path(__file__).resolve().parents[1] / "docker" / "kuberay-rayjob.yaml").read_text()
    for label in labels:  # the KubeRay example starts the nodes these labels ask for
        assert label in kuberay
    assert learner_node == "learner_node" and "configs/meissonic-multinode.yaml" in kuberay


@pytest.mark.parametrize("name", ["amused-1gpu.yaml", "sd3-1gpu.yaml"])
def test_one_gpu_configs_train_two_iterations_on_cpu_with_tiny_models(name, tmp_path, tiny_amused, tiny_sd3,
                                                                      tiny_clip_folder, tiny_hps, single_thread):
    """The config as shipped, with --set swapping in tiny local models (16 px images: the shapes judge of the eval
    reads 16 px), the local runtime and tiny sizes."""
    folder, sizes = (tiny_sd3, ["model.resolution=16", "sampler.steps=4", "algo.steps.window=2",
                                "train.eval_steps=[4]", "eval.steps=4"]) if name == "sd3-1gpu.yaml" else \
        (tiny_amused(sample_size=4, vq_levels=3), [])
    arch, _, hps = tiny_hps
    rewards = [{"kind": "hps", "path": str(hps), "arch": arch, "weight": 1.0},
               {"kind": "clip", "path": str(tiny_clip_folder), "weight": 0.5}]
    metadata = tmp_path / "eval.jsonl"
    write_jsonl(metadata, [colors("red", "circle"), two_object("circle", "square")])
    overrides = ["runtime=local", f"model.path={folder}", f"rewards={json.dumps(rewards)}",
                 "cluster.rollout_gpus=0", "cluster.reward_gpus=0", "cluster.learner_gpus=0", "threads=1",
                 "train.iterations=2", "algo.group_size=2", "algo.prompts_per_iteration=2", "algo.minibatch=4",
                 "sampler.batch_size=4", f"train.eval_metadata={{tiny: {metadata}}}", *sizes]
    run = tmp_path / "run"
    args = ["train", "--config", str(CONFIGS / name), "--run-dir", str(run)]
    assert main(args + [arg for o in overrides for arg in ("--set", o)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    hps_name, clip_name = f"reward/hps_{hps.stem}", f"reward/clip_{tiny_clip_folder.name}"
    assert all(np.isfinite(r[hps_name]) and np.isfinite(r[clip_name]) for r in rows)
    assert rows[0]["train_theta"] and rows[0]["usable"] == 4
    assert (run / "checkpoints" / "iter_000002" / "model.safetensors").is_file()
    assert load_config(run / "config.yaml").model.path == str(folder)


def test_llada_8gpu_fills_one_node_with_maskgrpos_text_setup():
    config = load_config(CONFIGS / "llada-8gpu.yaml")
    c, s, algo = config.cluster, config.sampler, config.algo
    assert sum(n * gpus for n, gpus, _ in pools(c).values()) == GPUS_PER_NODE and c.reward_gpus == 0  # CPU verifier
    assert (c.zero_stage, c.weight_sync) == (3, "collective")
    assert (config.model.kind, config.model.trust_folder_code) == ("llada", True)
    assert Path(config.model.path).is_absolute() and Path(config.train.prompts).is_absolute()
    assert (s.kind, s.length, s.block_length, s.steps) == ("low_confidence", 256, 16, 128)  # MaskGRPO's text script
    assert (algo.theta_likelihood, algo.inner_epochs, algo.maskgrpo_gamma, algo.group_size) == ("maskgrpo", 12, 0.6, 6)
    batches = algo.rollout_prompts * algo.samples_per_prompt / s.batch_size
    assert batches == int(batches) and batches % c.rollout_workers == 0
    assert config.sampler.steps in config.train.eval_steps and config.eval.steps == config.sampler.steps
