"""aMUSEd behind our contract, on a tiny random-weight aMUSEd of the real architecture that the tests build and save
in AmusedPipeline's layout (tests/conftest.py), then load through our own code."""

import numpy as np
import pytest
import torch
from diffusers import AmusedPipeline

from cogrpo.models.amused import AmusedModel
from cogrpo.models.checkpoint import build_model, save_model
from cogrpo.proto.config import ModelConfig, SamplerConfig, load_config
from cogrpo.proto.errors import InputError
from cogrpo.rollout.masked_image.family import hand_knobs
from cogrpo.rollout.masked.sampler import _gumbel, chosen_log_probs, generate, guided_log_probs
from cogrpo.rollout.schedule import HandSchedule

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ["a red circle", "two blue squares"]
CODEBOOK = 32
MASK_TOKEN = 39  # as in the released checkpoints: the vocabulary is rounded up and the mask is its last id


@pytest.fixture(scope="module")
def folder(tiny_amused):
    return tiny_amused(CODEBOOK, MASK_TOKEN, sample_size=4, vq_levels=2)


@pytest.fixture(scope="module")
def model(folder):
    return build_model(ModelConfig(kind="amused", path=str(folder)))


def test_logits_over_the_codebook_with_our_mask_id_mapped_to_amused_mask_token(model):
    assert isinstance(model, AmusedModel)
    assert (model.codebook_size, model.mask_id, model.native_mask_id, model.grid) == (CODEBOOK, CODEBOOK, 39, (4, 4))
    tokens = torch.randint(0, CODEBOOK, (2, 16))
    tokens[:, ::3] = model.mask_id
    cond = model.encode_prompts(PROMPTS)
    logits = model(tokens, cond)
    assert logits.shape == (2, 16, CODEBOOK)
    hidden, pooled, micro = model.unpack(cond)
    theirs = tokens.masked_fill(tokens == model.mask_id, MASK_TOKEN).view(2, 4, 4)
    direct = model.transformer(theirs, encoder_hidden_states=hidden, pooled_text_emb=pooled, micro_conds=micro)
    assert torch.equal(logits, direct.permute(0, 2, 3, 1).reshape(2, 16, CODEBOOK))
    # our mask id is a real code to aMUSEd (32 < 39): were it passed through unmapped, the logits would change
    raw = model.transformer(tokens.view(2, 4, 4), encoder_hidden_states=hidden, pooled_text_emb=pooled,
                            micro_conds=micro)
    assert not torch.allclose(direct, raw)


def test_a_bf16_transformer_reads_cast_conditioning_and_its_log_probs_are_float32(folder):
    """As under DeepSpeed's bf16 on GPUs: the engine casts the transformer, trajectories keep float32 conditioning;
    the logits stay bf16 (no float32 copy of them is kept) and the log-probs taken from them are float32."""
    model = build_model(ModelConfig(kind="amused", path=str(folder)))
    tokens = torch.randint(0, CODEBOOK, (2, 16))
    cond = model.encode_prompts(PROMPTS)
    knobs = torch.tensor([[0.5, 1.0, 1.0, 2.0]] * 2)
    full = guided_log_probs(model, tokens, cond, model.null_conditioning(2), knobs)
    model.transformer.to(torch.bfloat16)
    assert model(tokens, cond).dtype == torch.bfloat16
    half = guided_log_probs(model, tokens, cond, model.null_conditioning(2), knobs)
    assert half.dtype == torch.float32 and torch.allclose(half, full, atol=0.3, rtol=0.05)
    picked = chosen_log_probs(model, tokens, cond, model.null_conditioning(2), knobs, tokens)
    assert picked.dtype == torch.float32 and torch.equal(picked, half.gather(-1, tokens[..., None]).squeeze(-1))


def test_conditioning_packs_clip_states_pooled_embedding_and_micro_conditioning(model):
    cond = model.encode_prompts(PROMPTS)
    assert cond.shape == (2, 12 * 32 + 16 + 5)
    ids = model.text.tokenizer(PROMPTS, return_tensors="pt", padding="max_length", max_length=12,
                               truncation=True).input_ids
    out = model.text.encoder(ids, output_hidden_states=True)
    hidden, pooled, micro = model.unpack(cond)
    assert torch.equal(hidden, out.hidden_states[-2]) and torch.equal(pooled, out.text_embeds)
    assert micro.tolist() == [[8.0, 8.0, 0.0, 0.0, 6.0]] * 2  # 4x4 codes at 2x = 8x8 pixels, no crop, aesthetic 6
    assert torch.equal(model.null_conditioning(3), model.encode_prompts([""]).expand(3, -1))
    features = model.prompt_features(cond)
    assert torch.equal(features, out.text_embeds) and features.untyped_storage().nbytes() == features.nbytes
    assert model.prompt_feature_dim == 16


def test_state_is_the_transformer_alone(model):
    """What the learner trains and the weight channel ships; CLIP and the VQ-GAN stay frozen outside it."""
    assert all(name.startswith("transformer.") for name in model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in model.transformer.parameters())


def test_vq_decode_gives_uint8_pixels_and_encode_gives_codes(model):
    tokens = torch.randint(0, CODEBOOK, (3, 16))
    images = model.decode_images(tokens)
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    codes = model.tokenizer.encode(images)
    assert codes.shape == (3, 16) and codes.min() >= 0 and codes.max() < CODEBOOK
    with pytest.raises(ValueError, match="encodes"):
        model.tokenizer.encode(np.zeros((1, 16, 16, 3), np.uint8))


def _gumbel_max(probs, num_samples, replacement=False, generator=None):
    """A categorical draw by Gumbel-max over the same uniforms our sampler uses."""
    assert num_samples == 1
    return (probs.log() + _gumbel(tuple(probs.shape), generator)).argmax(-1, keepdim=True)


@pytest.mark.parametrize("amused_scale, our_guidance", [(1.0, 0.0), (3.0, 2.0)])
def test_our_sampler_and_amused_pipeline_decode_the_same_tokens_and_pixels(folder, model, monkeypatch,
                                                                          amused_scale, our_guidance):
    """Conformance with diffusers' own AmusedPipeline, same tiny model, same seed, hand schedule.

    Matched settings: our guidance w = their guidance_scale - 1 (their s = 1 means no guidance, our w = 0); our
    re-mask temperature g (1 - t / steps) = their linear temperature schedule from g to g / steps; token temperature
    1 (they have none); the cosine schedule and the micro-conditioning are each side's defaults.

    The one difference in random-number use: both sides draw from one torch.Generator in the same order at every
    step (a categorical draw at every position, then one uniform per position for the re-mask Gumbel noise), but
    AmusedScheduler makes the categorical draw with torch.multinomial and our sampler with the Gumbel-max trick over
    uniforms: the same distribution, different numbers. So here torch.multinomial is replaced by the Gumbel-max
    draw over the same uniforms, and both sides then consume identical noise; every other line run is each side's
    own code (their scheduler's confidence ranking, mask-length arithmetic and guidance; our sampler's).
    """
    steps, remask_temperature, seed = 4, 2.0, 7
    pipe = AmusedPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    draws = []
    monkeypatch.setattr(torch, "multinomial", lambda *a, **k: draws.append(1) or _gumbel_max(*a, **k))

    def theirs(output_type):
        return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=amused_scale,
                    temperature=(remask_temperature, remask_temperature / steps),
                    generator=torch.Generator().manual_seed(seed), output_type=output_type).images

    schedule = HandSchedule(hand_knobs(SamplerConfig(guidance=our_guidance, temperature=1.0,
                                                     remask_temperature=remask_temperature), steps))
    ours = generate(model, model.encode_prompts(PROMPTS), schedule, steps, seed=seed)
    assert torch.equal(ours.tensors['tokens'].view(2, 4, 4), theirs("latent"))
    assert len(draws) == steps  # the patched draw is the one their scheduler made
    pixels = np.stack([np.asarray(image) for image in theirs("pil")])
    assert np.array_equal(model.decode_images(ours.tensors['tokens']), pixels)
    other_seed = generate(model, model.encode_prompts(PROMPTS), schedule, steps, seed=seed + 1)
    # the seed matters, so agreeing on it means something
    assert not torch.equal(other_seed.tensors['tokens'], ours.tensors['tokens'])


@pytest.mark.parametrize("device, dtype", [
    pytest.param("cpu", torch.float32, id="cpu-fp32"),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=pytest.mark.cuda),  # as a GPU rollout worker holds it
])
def test_one_learner_update_trains_the_transformer(folder, learner_update, device, dtype):
    """It samples images (the transformer on the device, tokens and pixels back on the CPU) and trains."""
    model = build_model(ModelConfig(kind="amused", path=str(folder))).to(device, dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    text_before = [p.clone() for p in model.text.encoder.parameters()]
    metrics, traj = learner_update(model, PROMPTS * 2)
    assert model.transformer.dtype == dtype and model.device.type == device
    assert model.decode_images(traj.tensors["tokens"]).shape == (4, 8, 8, 3)
    assert metrics["train_theta"] and np.isfinite(metrics["loss_theta"]) and metrics["grad_norm_theta"] > 0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    assert all(torch.equal(a, b) for a, b in zip(text_before, model.text.encoder.parameters()))


def test_fine_tuned_weights_load_over_the_folder(folder, tmp_path):
    tuned = build_model(ModelConfig(kind="amused", path=str(folder)))
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01)
    save_model(tuned, tmp_path / "model.safetensors")
    back = build_model(ModelConfig(kind="amused", path=str(folder), checkpoint=str(tmp_path / "model.safetensors")))
    assert all(torch.equal(v, tuned.state_dict()[k]) for k, v in back.state_dict().items())
    tiny = build_model(ModelConfig(checkpoint=None))
    save_model(tiny, tmp_path / "tiny.safetensors")
    with pytest.raises(InputError, match="holds kind .tiny_mdm., not .amused."):
        build_model(ModelConfig(kind="amused", path=str(folder), checkpoint=str(tmp_path / "tiny.safetensors")))


def test_bad_folders_and_configs_are_one_clear_line(folder, tmp_path):
    with pytest.raises(InputError, match="aMUSEd folder not found"):
        build_model(ModelConfig(kind="amused", path=str(tmp_path / "missing")))
    (tmp_path / "partial" / "transformer").mkdir(parents=True)
    with pytest.raises(InputError, match="has no vqvae/"):
        build_model(ModelConfig(kind="amused", path=str(tmp_path / "partial")))
    for overrides, message in [(["model.kind=amused"], "needs path"),
                               ([f"model.path={folder}"], "only for kinds amused"),
                               (["model.kind=amused", "model.path=x", "model.checkpoint=builtin:tiny_mdm"],
                                "not amused weights")]:
        with pytest.raises(InputError, match=message) as info:
            load_config(None, overrides)
        assert "\n" not in str(info.value)
    assert load_config(None, ["model.kind=amused", f"model.path={folder}"]).model.checkpoint is None


def test_a_real_model_samples_any_prompt_where_the_shapes_world_refuses_unknown_words(folder, tmp_path, capsys):
    from cogrpo.cli import main

    amused = ["--set", "model.kind=amused", "--set", f"model.path={folder}", "--set", "model.checkpoint=null",
              "--set", "sampler.batch_size=4", "--steps", "2", "--n", "4"]
    out = str(tmp_path / "dog.png")
    assert main(["sample", "--prompt", "a photo of a dog on a bench", "--out", out, *amused]) == 0
    assert (tmp_path / "dog.png").is_file() and "4 images" in capsys.readouterr().out
    assert main(["sample", "--prompt", "a photo of a dog", "--out", str(tmp_path / "tiny.png"), "--n", "4"]) == 2
    assert "unknown word 'dog'" in capsys.readouterr().err and not (tmp_path / "tiny.png").exists()
