"""The learner's memory settings change its peak, never its arithmetic: theta's update replayed in blocks of
(sample, step) pairs (`replay_chunk`) or with activation checkpointing gives the weights and metrics of the update
run in one piece, for every theta objective's averaging, with a KL term, on stale samples, and for the flow family's
SDE replay."""

import copy

import pytest
import torch

from cogrpo.learner.learner import Learner, ScoredBatch, TorchStep
from cogrpo.models.activations import _checkpointed_forward, enable_activation_checkpointing
from cogrpo.models.schedule_policy import PolicySchedule, SchedulePolicy
from cogrpo.models.tiny_flow import TinyFlow
from cogrpo.models.tiny_mdm import Block, TinyMDM
from cogrpo.models.checkpoint import build_model
from cogrpo.proto.config import AlgoConfig, Config, ModelConfig, SamplerConfig, TinyArch
from cogrpo.proto.errors import InputError
from cogrpo.rollout.flow_image.family import FlowImageFamily
from cogrpo.rollout.masked.sampler import chosen_log_probs, guided_log_probs
from cogrpo.rollout.masked_image.family import MaskedImageFamily
from cogrpo.rollout.steps import full_plan

PROMPTS = ["a photo of a red circle", "a photo of two squares", "a photo of a circle and a triangle",
           "a photo of a green square above a blue triangle"]
ADV = torch.tensor([1.0, -0.5, 0.25, -2.0])
STEPS = 5
ARCH = TinyArch(d_model=32, layers=2, heads=2, conv_layers=1)


def sampled(family_cls, model, config: Config):
    torch.manual_seed(0)
    family = family_cls(config)
    encoder = family.schedule_encoder(model, config.schedule_policy)
    policy = SchedulePolicy(config.schedule_policy, family.knobs, encoder)
    traj = family.sample(model, PROMPTS, PolicySchedule(policy, family.hand_schedule(STEPS)), full_plan(STEPS), 3)
    return family, policy, traj


def updated(family_cls, model, config: Config, stale: bool = False, checkpointing: bool = False):
    """theta after one update and the learner's metrics. The optimiser is plain SGD, so the weights compare the
    gradients (Adam would magnify float-order noise in entries whose gradient is zero, such as the key bias)."""
    family, policy, traj = sampled(family_cls, model, config)
    model = copy.deepcopy(model)
    if checkpointing:
        enable_activation_checkpointing(model)
    step = TorchStep(list(model.parameters()), torch.optim.SGD(model.parameters(), lr=config.algo.lr), 1.0)
    learner = Learner(model, copy.deepcopy(policy), config, family, theta_step=step)
    trained = torch.ones(len(PROMPTS), STEPS, dtype=torch.bool)
    trained[1, 3] = trained[2, 0] = False  # some (sample, step) pairs left out, as a window leaves them
    metrics = learner.update(ScoredBatch(traj, ADV, torch.ones(len(PROMPTS), dtype=torch.bool), trained), 0, stale)
    return model.state_dict(), metrics


def assert_same_update(a, b):
    (weights_a, metrics_a), (weights_b, metrics_b) = a, b
    assert metrics_a.keys() == metrics_b.keys()
    for key in metrics_a:
        assert metrics_a[key] == pytest.approx(metrics_b[key], rel=1e-5, abs=1e-6), key
    for name, tensor in weights_a.items():
        torch.testing.assert_close(weights_b[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def moved(a, b) -> bool:
    return any(not torch.equal(a[0][name], tensor) for name, tensor in b[0].items())


MASKED = [dict(), dict(token_average="token"), dict(ratio="step_product"), dict(kl_beta=0.1)]


@pytest.mark.parametrize("algo", MASKED, ids=["step", "token", "step_product", "kl"])
def test_a_masked_models_update_in_chunks_of_steps_equals_the_update_in_one_piece(algo):
    model = TinyMDM(ARCH)
    sampler = SamplerConfig(steps=STEPS, guidance=1.0)

    def config(chunk: int) -> Config:
        return Config(sampler=sampler, algo=AlgoConfig(mode="grpo", lr=1.0, minibatch=2, inner_epochs=2,
                                                        replay_chunk=chunk, **algo))

    whole = updated(MaskedImageFamily, model, config(0))
    assert moved(whole, (model.state_dict(), {}))
    for chunk in (1, 3, 6):  # a step at a time; 3 steps then 2; every step of one sample at a time
        assert_same_update(whole, updated(MaskedImageFamily, model, config(chunk)))


def test_an_estimator_that_scores_no_steps_is_replayed_a_few_samples_at_a_time():
    model = TinyMDM(ARCH)

    def config(chunk: int) -> Config:
        return Config(sampler=SamplerConfig(steps=STEPS, guidance=1.0),
                      algo=AlgoConfig(mode="grpo", lr=1.0, minibatch=4, inner_epochs=2, theta_likelihood="maskgrpo",
                                      replay_chunk=chunk))

    assert_same_update(updated(MaskedImageFamily, model, config(0)), updated(MaskedImageFamily, model, config(3)))


def test_stale_samples_and_activation_checkpointing_change_nothing_either():
    model = TinyMDM(ARCH)
    with torch.no_grad():
        newer = copy.deepcopy(model)
        newer.head.bias.add_(0.3)
    config = Config(sampler=SamplerConfig(steps=STEPS, guidance=1.0),
                    algo=AlgoConfig(mode="grpo", lr=1.0, minibatch=2, kl_beta=0.05))
    chunked = config.model_copy(update={"algo": config.algo.model_copy(update={"replay_chunk": 2})})
    whole = updated(MaskedImageFamily, model, config, stale=True)
    assert_same_update(whole, updated(MaskedImageFamily, model, chunked, stale=True, checkpointing=True))
    assert_same_update(whole, updated(MaskedImageFamily, model, config, stale=True, checkpointing=True))


def test_a_flow_models_sde_replay_in_chunks_equals_the_update_in_one_piece():
    model = TinyFlow(ARCH)
    with torch.no_grad():  # TinyFlow's head starts at zero: move it, so every layer gets a gradient
        model.head.weight.normal_(0, 0.02)

    def config(chunk: int) -> Config:
        return Config(model={"kind": "tiny_flow"}, sampler=SamplerConfig(kind="flow", steps=STEPS),
                      algo=AlgoConfig(mode="grpo", lr=1.0, minibatch=2, replay_chunk=chunk))

    assert_same_update(updated(FlowImageFamily, model, config(0)), updated(FlowImageFamily, model, config(2)))


def test_the_chosen_tokens_log_probs_are_the_guided_distributions_with_the_same_gradient():
    torch.manual_seed(1)
    model = TinyMDM(ARCH)
    canvas = torch.randint(0, model.codebook_size + 1, (3, model.num_tokens))
    targets = torch.randint(0, model.codebook_size, (3, model.num_tokens))
    cond, null = model.encode_prompts(PROMPTS[:3]), model.null_conditioning(3)
    knobs = torch.tensor([[0.5, 0.7, 1.0, 2.0], [0.5, 1.0, 1.0, 0.0], [0.5, 1.3, 1.0, 4.0]])
    expected = guided_log_probs(model, canvas, cond, null, knobs).gather(-1, targets[..., None]).squeeze(-1)
    (grad_expected,) = torch.autograd.grad(expected.sum(), model.head.weight)
    picked = chosen_log_probs(model, canvas, cond, null, knobs, targets)
    (grad,) = torch.autograd.grad(picked.sum(), model.head.weight)
    torch.testing.assert_close(picked, expected)
    torch.testing.assert_close(grad, grad_expected)


def test_activation_checkpointing_is_refused_for_a_model_without_blocks():
    with pytest.raises(InputError, match="activation_checkpointing"):
        enable_activation_checkpointing(torch.nn.Linear(2, 2))


def test_a_diffusers_backbone_checkpoints_its_own_blocks_with_the_same_update(tiny_amused):
    model = build_model(ModelConfig(kind="amused", path=str(tiny_amused())))
    config = Config(sampler=SamplerConfig(steps=STEPS, guidance=1.0),
                    algo=AlgoConfig(mode="grpo", lr=1.0, minibatch=2, replay_chunk=3))
    checkpointed = updated(MaskedImageFamily, model, config, checkpointing=True)
    assert_same_update(updated(MaskedImageFamily, model, config), checkpointed)
    enable_activation_checkpointing(model)
    layers = model.transformer.transformer_layers
    assert layers and all(layer.forward.__func__ is _checkpointed_forward for layer in layers)
    assert copy.deepcopy(model).transformer.transformer_layers[0].forward.__self__ is not layers[0]


def test_a_checkpointed_block_runs_again_in_backward_and_not_under_no_grad(monkeypatch):
    model = TinyMDM(ARCH)
    enable_activation_checkpointing(model)
    calls, forward = [], Block.forward
    monkeypatch.setattr(Block, "forward", lambda self, *args: calls.append(self) or forward(self, *args))
    tokens, cond = torch.randint(0, model.codebook_size, (2, model.num_tokens)), model.encode_prompts(PROMPTS[:2])
    with torch.no_grad():
        model(tokens, cond)
    assert len(calls) == ARCH.layers
    model(tokens, cond).sum().backward()
    assert len(calls) == ARCH.layers * 3  # and with gradients: once forward, once again in backward
