import random

import torch

from cogrpo.learner.pretrain import make_batch, mask_tokens, pretrain
from cogrpo.models.tiny_mdm import TinyMDM
from cogrpo.proto.config import PretrainConfig


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


def test_pretraining_from_scratch_lowers_the_loss():
    torch.manual_seed(0)
    model = TinyMDM()
    losses = []
    pretrain(model, PretrainConfig(steps=60, batch_size=32, log_every=1), seed=0,
             log=lambda r: losses.append(r["loss"]))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.4 * first, (first, last)
