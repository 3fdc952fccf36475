"""Every use of a private Ray, DeepSpeed or torch API, in one place, with the versions it was written against.
tests/cluster/test_compat.py fails loudly when an installed version differs from `TESTED` or a private name is
gone: re-check each shim below against the new version before changing `TESTED`.

Imports are inside the functions: a worker that never starts a learner never imports DeepSpeed.
"""

from __future__ import annotations

import datetime
from contextlib import contextmanager
from typing import Iterator

TESTED = {"ray": "2.60.0", "deepspeed": "0.19.8", "torch": "2.14.1"}

# (module, attribute) for each private name used below, for the test to find
PRIVATE_NAMES = [
    ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER"),
    ("deepspeed.ops", "__compatible_ops__"),
    ("torch.distributed", "ProcessGroupGloo._Options"),
    ("deepspeed.runtime.checkpoint_engine", "TorchCheckpointEngine"),
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
    ("torch", "_foreach_copy_"),
]


@contextmanager
def ray_single_machine_flag(enabled: bool) -> Iterator[None]:
    """Ray reads its single-machine mode (every server on 127.0.0.1; its default on macOS and Windows) into a private
    constant when it is imported: set it for this driver while the block runs, then restore it."""
    import ray._private.ray_constants as ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = not enabled
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def ray_cluster_flag() -> bool:
    import ray._private.ray_constants as ray_constants

    return ray_constants.ENABLE_RAY_CLUSTER


def skip_deepspeed_op_probes() -> None:
    """DeepSpeed's CPU backend would JIT-compile a shared-memory all-reduce at init_distributed (C++, 24-60 s per
    fresh environment, under a file lock) after probing every op with the compiler. Only its inference path uses
    that kernel; training's collectives are torch.distributed's. The probe's result is a module attribute DeepSpeed
    reads through .get(name, False), so an empty one means nothing is compiled."""
    import deepspeed

    deepspeed.ops.__compatible_ops__ = {}


def copy_all(targets: list, sources: list) -> None:
    """target.copy_(source) for every pair in one call (torch's multi-tensor copy: no Python step per tensor, and on
    a GPU a few kernel launches for hundreds of tensors)."""
    import torch

    torch._foreach_copy_(targets, sources)


def process_group(store, rank: int, world: int, own_ip: str, timeout_s: float, cuda: bool):
    """A process group of its own (outside torch.distributed's default group), with a timeout on every call: NCCL
    on GPUs, gloo bound to `own_ip` on CPUs. Their option classes' timeout and device fields are private."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    if cuda:
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world, options)
    options = dist.ProcessGroupGloo._Options()
    options._timeout = timeout
    options._devices = [dist.ProcessGroupGloo.create_device(hostname=own_ip)]
    return dist.ProcessGroupGloo(store, rank, world, options)


@contextmanager
def weights_only_deepspeed_reads(engine) -> Iterator[None]:
    """DeepSpeed's checkpoint reader unpickles anything, so a tampered checkpoint could run code: while the block
    runs, the engine reads every file with torch.load(weights_only=True), admitting beyond tensors and plain data only
    the three small DeepSpeed classes its ZeRO optimizer state holds."""
    import torch
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    class WeightsOnly(TorchCheckpointEngine):
        def load(self, path, map_location=None):
            with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
                return torch.load(path, map_location=map_location, weights_only=True)

    own, engine.checkpoint_engine = engine.checkpoint_engine, WeightsOnly()
    try:
        yield
    finally:
        engine.checkpoint_engine = own


def version_mismatches() -> list[str]:
    """Installed versions that differ from the ones the shims were written against."""
    import deepspeed
    import ray
    import torch

    installed = {"ray": ray.__version__, "deepspeed": deepspeed.__version__, "torch": torch.__version__.split("+")[0]}
    return [f"{name} {installed[name]} (shims written for {version})" for name, version in TESTED.items()
            if installed[name] != version]
