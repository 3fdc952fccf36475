import random

import pytest
import torch

from cogrpo.learner.pretrain import make_batch, mask_tokens, pretrain
from cogrpo.models.tiny_flow import TinyFlow
from cogrpo.models.tiny_mdm import TinyMDM
from cogrpo.proto.config import PretrainConfig, TinyArch


def test_masking_covers_at_least_one_token_and_uses_the_mask_id():
    tokens = torch.randint(0, 91, (16, 64))
    inputs, masked = mask_tokens(tokens, 91, torch.Generator().manual_seed(0))
    assert (masked.sum(1) >= 1).all()
    assert torch.equal(inputs[masked], torch.full_like(inputs[masked], 91))
    assert torch.equal(inputs[~masked], tokens[~masked])


def test_null_prompt_dropout():
    model = TinyMDM()
    _, cond = make_batch(model, random.Random(0), 64, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(cond, model.null_conditioning(64))


@pytest.mark.parametrize("model_class, drop", [(TinyMDM, 0.4), (TinyFlow, 0.7)])
def test_pretraining_from_scratch_lowers_the_loss(model_class, drop):
    """TinyMDM's masked-token cross-entropy; TinyFlow's velocity regression, which starts near 2 (|eps - x_0|^2
    for a zero prediction on mostly white images) and cannot fall as far (the velocity at a noisy input is
    uncertain)."""
    torch.manual_seed(0)
    model = model_class(TinyArch(d_model=64, layers=2))
    losses = []
    pretrain(model, PretrainConfig(steps=60, batch_size=32, log_every=1), seed=0,
             log=lambda r: losses.append(r["loss"]))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < drop * first, (first, last)
