import pytest
import torch
from safetensors.torch import save_file

from cogrpo.models.checkpoint import build_model, load_model, resolve_checkpoint_path, save_model
from cogrpo.models.tiny_mdm import TinyMDM, rotary_angles, rotate
from cogrpo.proto.config import ModelConfig, TinyArch
from cogrpo.proto.errors import InputError


def test_about_a_million_parameters_and_logits_over_the_codebook():
    model = TinyMDM()
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 1.5e6
    tokens = torch.full((3, model.num_tokens), model.mask_id)
    logits = model(tokens, model.encode_prompts(["a photo of a red circle"] * 3))
    assert logits.shape == (3, 64, model.codebook_size)


def test_null_conditioning_changes_the_output():
    model = TinyMDM()
    tokens = torch.full((1, model.num_tokens), model.mask_id)
    cond = model(tokens, model.encode_prompts(["a photo of a red circle"]))
    null = model(tokens, model.null_conditioning(1))
    assert not torch.allclose(cond, null)


def test_checkpoint_round_trip(tmp_path):
    model = TinyMDM(TinyArch(d_model=32, layers=1, heads=2, conv_layers=1))
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    back = load_model(path)
    assert back.arch == model.arch
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k


def test_shipped_checkpoint_loads(shipped_model):
    assert resolve_checkpoint_path("builtin:tiny_mdm").stat().st_size < 8e6
    assert isinstance(shipped_model, TinyMDM)


def test_bad_checkpoints_are_clear_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04pickle, not safetensors")
    with pytest.raises(InputError, match="not a valid safetensors"):
        load_model(junk)
    model = TinyMDM(TinyArch(d_model=32, layers=1, heads=2))
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    state = model.state_dict()
    state["head.weight"] = torch.zeros(5, 5)
    save_file(state, path, metadata={"kind": "tiny_mdm", "arch": model.arch.model_dump_json()})
    with pytest.raises(InputError, match=r"head.weight has shape \(5, 5\)"):
        load_model(path)
    with pytest.raises(InputError, match="run directory"):
        build_model(ModelConfig(checkpoint=str(tmp_path)))


def test_rotary_attention_scores_depend_on_relative_positions_only():
    """q_i . k_j after rotation is a function of j - i: shifting both positions leaves it, changing the offset does
    not; and a rotation keeps each vector's norm."""
    torch.manual_seed(0)
    cos, sin = rotary_angles(16, 8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i: int, j: int) -> float:
        return (rotate(q, cos[i], sin[i]) * rotate(k, cos[j], sin[j])).sum().item()

    assert score(2, 5) == pytest.approx(score(9, 12), abs=1e-5)
    assert score(2, 5) != pytest.approx(score(2, 6), abs=1e-3)
    assert torch.allclose(rotate(q, cos[7], sin[7]).norm(), q.norm())
