import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("COGRPO_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def shipped_model():
    from cogrpo.models.checkpoint import build_model
    from cogrpo.proto.config import ModelConfig

    return build_model(ModelConfig())
