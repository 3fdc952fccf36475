import random

import numpy as np
import pytest

from cogrpo.data.prompts import sample_records
from cogrpo.data.world import H, W, render, to_rgb
from cogrpo.models.patch_tokenizer import PatchTokenizer


def test_codebook_and_grid():
    tok = PatchTokenizer()
    assert tok.codebook_size == 91 and tok.grid == (8, 8)


def test_round_trip_is_exact_on_2000_renders():
    rng = random.Random(0)
    images = to_rgb(np.stack([render(r, rng) for r in sample_records(rng, 2000)]))
    tok = PatchTokenizer()
    tokens = tok.encode(images)
    assert tokens.shape == (2000, 64) and tokens.min() >= 0 and tokens.max() < tok.codebook_size
    assert np.array_equal(tok.decode(tokens), images)


def test_every_code_decodes_and_re_encodes_to_itself():
    tok = PatchTokenizer()
    codes = np.arange(tok.codebook_size)
    tokens = np.resize(codes, (2, 64))
    assert np.array_equal(tok.encode(tok.decode(tokens)), tokens)


def test_unrepresentable_images_are_refused():
    tok = PatchTokenizer()
    two_colours = np.zeros((1, H, W), np.int64)
    two_colours[0, 0, 0], two_colours[0, 0, 1] = 1, 2
    with pytest.raises(ValueError, match="two colours"):
        tok.encode(to_rgb(two_colours))
    off_palette = np.full((1, H, W, 3), 128, np.uint8)
    with pytest.raises(ValueError, match="palette"):
        tok.encode(off_palette)
