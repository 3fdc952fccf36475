"""cogrpo: Co-GRPO reinforcement learning for masked diffusion models."""

__version__ = "0.1.0"
