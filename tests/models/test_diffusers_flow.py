"""SD3 and FLUX.1 behind the flow family, on tiny random-weight models of the real architectures: with the SDE off
our sampler decodes what the diffusers pipeline decodes from the same initial latents, the SDE steps replay
exactly, theta is the transformer alone and trains, and bad folders are one clear line."""

import math

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from cogrpo.cluster.build import build_policies
from cogrpo.learner.learner import Learner, ScoredBatch
from cogrpo.models.checkpoint import build_model, save_model
from cogrpo.models.diffusers_flow import TEXT_LENGTH
from cogrpo.models.flux import load_flux
from cogrpo.models.sd3 import load_sd3
from cogrpo.proto.config import ModelConfig, StepSubsetConfig, resolve_config
from cogrpo.proto.errors import InputError
from cogrpo.rollout.flow_image.family import hand_knobs
from cogrpo.rollout.schedule import HandSchedule
from cogrpo.rollout.steps import full_plan, step_plan

PROMPTS = ["a red square", "two blue circles"]
STEPS = 3
FLUX_SHIFT = math.exp(calculate_shift(16, 4, 64, 0.5, 1.15))  # the tiny FLUX's mu at 16 latent positions
BACKBONES = {  # kind: (its pipeline, the model section, sampler settings the pipeline's defaults match)
    "sd3": (StableDiffusion3Pipeline, {}, {"guidance": 1.0, "time_shift": 3.0}),
    "flux": (FluxPipeline, {"resolution": 16, "embedded_guidance": 3.5}, {"guidance": 0.0, "time_shift": FLUX_SHIFT}),
}


@pytest.fixture(scope="module", params=list(BACKBONES))
def backbone(request, tiny_sd3, tiny_flux, single_thread):
    kind = request.param
    folder = {"sd3": tiny_sd3, "flux": tiny_flux}[kind]
    _, model, sampler = BACKBONES[kind]
    config = resolve_config({"model": {"kind": kind, "path": str(folder), **model},
                             "sampler": {"steps": STEPS, **sampler},
                             "algo": {"mode": "grpo", "lr": 1e-2, "minibatch": 2}})
    return kind, folder, build_policies(config)


def decode(policies, plan, seed=0):
    hand = HandSchedule(hand_knobs(policies.family.config.sampler, STEPS))
    return policies.family.sample(policies.model, PROMPTS, hand, plan, seed)


def test_with_the_sde_off_our_sampler_decodes_what_the_pipeline_decodes(backbone):
    kind, folder, policies = backbone
    pipeline = BACKBONES[kind][0].from_pretrained(folder, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    traj = decode(policies, step_plan(StepSubsetConfig(mode="none"), STEPS, 0, 0))
    start = traj.tensors["latents"][:, 0]
    guidance = 1 + policies.family.config.sampler.guidance
    options = {"guidance_scale": guidance} if kind == "sd3" else {"guidance_scale": 3.5, "height": 16, "width": 16}

    def theirs(output_type):
        latents = policies.model.spatial(start) if kind == "sd3" else start
        return pipeline(PROMPTS, num_inference_steps=STEPS, sigmas=np.linspace(1, 0, STEPS + 1)[:-1].tolist(),
                        latents=latents.clone(), output_type=output_type, max_sequence_length=TEXT_LENGTH,
                        **options).images

    ours = traj.tensors["latents"][:, -1]
    reference = theirs("latent")
    assert torch.allclose(policies.model.spatial(ours) if kind == "sd3" else ours, reference, atol=1e-5)
    pixels = (theirs("np") * 255).round().astype(np.uint8)
    assert np.abs(policies.family.decode(policies.model, traj).astype(int) - pixels).max() <= 1


def test_sde_steps_replay_their_recorded_log_probs(backbone):
    _, _, policies = backbone
    traj = decode(policies, full_plan(STEPS))
    estimator = policies.family.estimator("trajectory", policies.family.config.algo)
    steps = list(range(STEPS))
    assert torch.allclose(estimator.log_probs(policies.model, traj, steps, {}).logp,
                          estimator.behaviour(traj, steps), atol=1e-4)


def test_theta_is_the_transformer_alone_and_one_update_trains_it(backbone, tmp_path):
    kind, folder, policies = backbone
    model = policies.model
    assert all(name.startswith("transformer.") for name in model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = ScoredBatch(decode(policies, full_plan(STEPS)), torch.tensor([1.0, -1.0]), torch.ones(2, dtype=torch.bool),
                        torch.ones(2, STEPS, dtype=torch.bool))
    metrics = Learner(model, policies.policy, policies.family.config, policies.family).update(batch, iteration=0)
    assert metrics["grad_norm_theta"] > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    save_model(model, tmp_path / "tuned.safetensors")
    reloaded = build_model(ModelConfig(kind=kind, path=str(folder), checkpoint=str(tmp_path / "tuned.safetensors"),
                                       **BACKBONES[kind][1]))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reloaded.state_dict().items())


def test_bad_folders_and_resolutions_are_one_clear_line(tiny_sd3, tiny_flux, tmp_path):
    with pytest.raises(InputError, match="has no model_index.json"):
        load_sd3(tmp_path)
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(InputError, match="cannot load FLUX from"):
        load_flux(tmp_path, 16)
    with pytest.raises(InputError, match="resolution 18 is not a multiple of 4"):
        load_sd3(tiny_sd3, resolution=18)
    with pytest.raises(InputError, match="resolution 14 is not a multiple of 4"):
        load_flux(tiny_flux, 14)
    assert load_sd3(tiny_sd3, resolution=32).latent_shape == (256, 4)
    assert load_flux(tiny_flux, 32).latent_shape == (64, 16)
