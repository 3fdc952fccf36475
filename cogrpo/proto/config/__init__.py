"""The config tree: one frozen, validated pydantic model per section, and its loader."""

from cogrpo.proto.config.algo import AlgoConfig, StepSubsetConfig
from cogrpo.proto.config.base import Section
from cogrpo.proto.config.model import (FOLDER_MODELS, ModelConfig, RewardConfig, SamplerConfig,
                                       SchedulePolicyConfig, TinyArch, VlmJudgeConfig)
from cogrpo.proto.config.run import (ClusterConfig, EvalConfig, MetricsConfig, PretrainConfig, SimulateConfig,
                                     TrainConfig)
from cogrpo.proto.config.tree import Config, dump_config, load_config, resolve_config

__all__ = ["AlgoConfig", "ClusterConfig", "Config", "EvalConfig", "FOLDER_MODELS", "MetricsConfig", "ModelConfig",
           "PretrainConfig", "RewardConfig", "SamplerConfig", "SchedulePolicyConfig", "Section", "SimulateConfig",
           "StepSubsetConfig", "TinyArch", "TrainConfig", "VlmJudgeConfig", "dump_config", "load_config",
           "resolve_config"]
