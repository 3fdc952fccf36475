"""Meissonic behind our contract, on a tiny folder the tests write: the shared tiny VQ-GAN and CLIP text tower in
the pipeline layout, and `src/transformer.py`, a tiny real torch module with Meissonic's Transformer2DModel call
signature (token ids, text states, pooled embedding, timestep, rotary ids, micro-conditioning), loaded through our
own code."""

import numpy as np
import pytest
import torch

from cogrpo.models.checkpoint import build_model, save_model
from cogrpo.models.meissonic import MeissonicModel, load_meissonic
from cogrpo.proto.config import ModelConfig, load_config
from cogrpo.proto.errors import InputError

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ["a red circle", "two blue squares"]
CODEBOOK, MASK_TOKEN = 32, 39
TRANSFORMER_CODE = '''
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class Transformer2DModel(ModelMixin, ConfigMixin):
    """Meissonic's call signature, tiny: embeds ids, pools 2x2 when downsampling, mixes in the timestep, pooled
    text and micro-conditioning, attends to the text, and predicts the codebook at every latent position."""

    @register_to_config
    def __init__(self, vocab_size=40, codebook_size=32, width=16, joint_attention_dim=32, pooled_projection_dim=16,
                 downsample=False):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, width)
        self.context = torch.nn.Linear(joint_attention_dim, width)
        self.pooled = torch.nn.Linear(pooled_projection_dim + 5, width)
        self.rope = torch.nn.Linear(3, width)
        self.out = torch.nn.Linear(width, codebook_size)

    def forward(self, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                img_ids=None, txt_ids=None, micro_conds=None):
        b, h, w = hidden_states.shape
        x = self.embed(hidden_states)
        if self.config.downsample:
            x = torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        x = x.reshape(b, -1, x.shape[-1])
        assert img_ids.shape == (x.shape[1], 3) and txt_ids.shape == (encoder_hidden_states.shape[1], 3)
        x = x + self.rope(img_ids)[None] + torch.sin(timestep[:, None, None] / 1000.0 * torch.arange(1, 17))
        x = x + self.pooled(torch.cat([pooled_projections, micro_conds / 256.0], 1))[:, None]
        text = self.context(encoder_hidden_states) + self.rope(txt_ids)[None]
        x = x + torch.softmax(x @ text.transpose(1, 2), -1) @ text
        if self.config.downsample:
            side = int(x.shape[1] ** 0.5)
            x = x.reshape(b, side, side, -1).repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(b, h * w, -1)
        return self.out(x).permute(0, 2, 1).reshape(b, -1, h, w)
'''


@pytest.fixture(scope="module")
def make_folder(tmp_path_factory, tiny_pipeline_parts):
    def make(downsample=False, code=TRANSFORMER_CODE):
        root = tmp_path_factory.mktemp("tiny_meissonic")
        for name, part in tiny_pipeline_parts(CODEBOOK, MASK_TOKEN, vq_levels=2).items():
            part.save_pretrained(root / name)
        (root / "src").mkdir()
        (root / "src" / "transformer.py").write_text(code)
        namespace = {}
        exec(compile(TRANSFORMER_CODE, "transformer.py", "exec"), namespace)  # the class, to save tiny weights
        torch.manual_seed(1)
        namespace["Transformer2DModel"](downsample=downsample).save_pretrained(root / "transformer")
        return root

    return make


@pytest.fixture(scope="module")
def folder(make_folder):
    return make_folder()


def config_for(folder, **extra) -> ModelConfig:
    return ModelConfig(kind="meissonic", path=str(folder), trust_folder_code=True, resolution=16, **extra)


@pytest.fixture(scope="module")
def model(folder):
    return build_model(config_for(folder))


@pytest.mark.parametrize("downsample", [False, True])
def test_logits_come_from_the_folder_class_with_meissonic_inputs(make_folder, downsample):
    """Every input built as Meissonic's training builds it: the mask mapped to its token, timestep = masked
    fraction x 1000 per sample, img_ids (0, row, col) over the transformer's grid, txt_ids zeros."""
    model = build_model(config_for(make_folder(downsample=downsample)))
    assert isinstance(model, MeissonicModel) and type(model.transformer).__name__ == "Transformer2DModel"
    assert (model.codebook_size, model.mask_id, model.native_mask_id, model.grid) == (CODEBOOK, CODEBOOK, 39, (8, 8))
    assert model.decode_images(torch.zeros(1, 64, dtype=torch.long)).shape == (1, 16, 16, 3)
    tokens = torch.randint(0, CODEBOOK, (2, 64))
    tokens[0, ::2] = model.mask_id
    tokens[1, ::4] = model.mask_id
    cond = model.encode_prompts(PROMPTS)
    logits = model(tokens, cond)
    assert logits.shape == (2, 64, CODEBOOK)
    hidden, pooled, micro = model.unpack(cond)
    side = 4 if downsample else 8
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
    direct = model.transformer(hidden_states=tokens.masked_fill(tokens == CODEBOOK, MASK_TOKEN).view(2, 8, 8),
                               encoder_hidden_states=hidden, pooled_projections=pooled,
                               timestep=torch.tensor([500.0, 250.0]), img_ids=img_ids, txt_ids=torch.zeros(12, 3),
                               micro_conds=micro)
    assert torch.equal(logits, direct.permute(0, 2, 3, 1).reshape(2, 64, CODEBOOK))
    assert all(name.startswith("transformer.") for name in model.state_dict())


def test_generation_and_one_learner_update(model, learner_update):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics, traj = learner_update(model, PROMPTS * 2)
    tokens = traj.tensors["tokens"]
    assert (tokens < CODEBOOK).all() and model.decode_images(tokens).shape == (4, 16, 16, 3)
    assert metrics["train_theta"] and np.isfinite(metrics["loss_theta"]) and metrics["grad_norm_theta"] > 0
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_fine_tuned_weights_load_over_the_folder(folder, model, tmp_path):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    save_model(model, tmp_path / "model.safetensors")
    back = build_model(config_for(folder, checkpoint=str(tmp_path / "model.safetensors")))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in back.state_dict().items())


def test_folder_code_runs_only_with_the_flag(folder):
    with pytest.raises(InputError, match="model.trust_folder_code: true") as info:
        load_config(None, ["model.kind=meissonic", f"model.path={folder}"])
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="trust_folder_code"):
        load_meissonic(folder, 16, trust_folder_code=False)
    config = load_config(None, ["model.kind=meissonic", f"model.path={folder}", "model.trust_folder_code=true"])
    assert (config.model.checkpoint, config.model.resolution) == (None, 1024)  # Meissonic's release
    with pytest.raises(InputError, match="only for kinds meissonic and llada"):
        load_config(None, ["model.trust_folder_code=true"])
    with pytest.raises(InputError, match="needs resolution"):
        load_config(None, ["model.kind=meissonic", f"model.path={folder}", "model.trust_folder_code=true",
                           "model.resolution=null"])


def test_bad_folders_are_one_clear_line(make_folder, folder, tmp_path):
    with pytest.raises(InputError, match="Meissonic folder not found"):
        load_meissonic(tmp_path / "missing", 16, True)
    no_code = make_folder()
    (no_code / "src" / "transformer.py").unlink()
    with pytest.raises(InputError, match="has no src/transformer.py"):
        load_meissonic(no_code, 16, True)
    with pytest.raises(InputError, match="defines no class Transformer2DModel"):
        load_meissonic(make_folder(code="x = 1\n"), 16, True)
    with pytest.raises(InputError, match="cannot import .*ZeroDivisionError"):
        load_meissonic(make_folder(code=TRANSFORMER_CODE + "1 / 0\n"), 16, True)
    with pytest.raises(InputError, match="not a multiple"):
        load_meissonic(folder, 15, True)
