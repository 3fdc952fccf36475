import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("COGRPO_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def shipped_model():
    from cogrpo.models.checkpoint import build_model
    from cogrpo.proto.config import ModelConfig

    return build_model(ModelConfig())


@pytest.fixture(scope="session")
def clip_tokenizer():
    """A real CLIPTokenizer (CLIP's BPE pipeline) over a tiny letter-level vocabulary: CLIP's own vocabulary is a
    hub download, and the tiny test models need a small one anyway."""
    import string

    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in [*string.ascii_lowercase, *(c + "</w>" for c in string.ascii_lowercase)]:
        vocab[piece] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=12)


@pytest.fixture(scope="module")
def single_thread():
    """For tiny models: their ops are too small to gain from a second thread, and on a loaded 2-core machine the
    hand-offs between threads cost several times the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
