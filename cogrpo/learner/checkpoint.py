"""What a checkpoint holds of the learner, written and read through the layout's names
(cogrpo/proto/layout.py): both policies' weights, theta's moving average, the optimizer states and the RNG states.

| file | written by | holds |
| --- | --- | --- |
| `model.safetensors`, `schedule_policy.safetensors` | the learner (rank 0) | both policies' weights |
| `averaged_model.safetensors` | the learner (rank 0) | theta's moving average, when `algo.ema_decay` > 0 |
| `optimizers.pt` | the learner (rank 0) | optimizer states by policy: theta and phi in one process; phi under Ray |
| `deepspeed/` | every learner rank (Ray) | DeepSpeed's checkpoint: theta's ZeRO-partitioned optimizer state |
| `rng.pt` | the driver | its torch, numpy and python RNG states |
| `state.json` | the driver | iteration, seed, runtime, weight version |

Weights are read only as safetensors, everything else only with torch.load(weights_only=True), so no file runs
pickled code. The prompts need no saved state: `training_records(seed, iteration)` is a pure function of the two.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from cogrpo.learner.averaging import WeightAverage
from cogrpo.data.weights import load_state_into, load_tensors, save_tensors
from cogrpo.models.checkpoint import save_model
from cogrpo.models.schedule_policy import SchedulePolicy
from cogrpo.proto.config import SchedulePolicyConfig
from cogrpo.proto.errors import InputError, last_line
from cogrpo.proto.layout import CheckpointLayout


def save_weights(folder: Path, model: torch.nn.Module, policy: SchedulePolicy, model_state: dict | None = None,
                 average: WeightAverage | None = None) -> None:
    """model_state: the full tensors when the module's own are partitioned (ZeRO-3). An average that has started
    is written as a whole model file beside the live one."""
    files = CheckpointLayout(folder)
    save_model(model, files.model, model_state)
    save_tensors(files.policy, policy.state_dict(), {"config": policy.config.model_dump_json()})
    if average is not None and average.state is not None:
        save_model(model, files.average, average.state)


def load_weights(folder: Path, model: torch.nn.Module | None, policy: SchedulePolicy,
                 average: WeightAverage | None = None) -> None:
    """What save_weights wrote, into live modules; model None where its weights come from elsewhere (DeepSpeed's
    checkpoint, under Ray)."""
    files = CheckpointLayout(folder)
    for module, path in ((model, files.model), (policy, files.policy)):
        if module is not None:
            load_state_into(module, load_tensors(path)[0], str(path))
    if average is not None and files.average.is_file():
        average.state = load_tensors(files.average)[0]


def saved_policy_config(folder: Path) -> SchedulePolicyConfig | None:
    """The config of the schedule policy saved in a checkpoint folder, or None if it holds none."""
    path = CheckpointLayout(folder).policy
    if not path.is_file():
        return None
    try:
        return SchedulePolicyConfig.model_validate_json(load_tensors(path)[1]["config"])
    except (KeyError, ValueError) as exc:
        raise InputError(f"schedule policy {path} has no valid config metadata ({exc})") from None


def load_policy_into(folder: Path, policy: SchedulePolicy) -> None:
    path = CheckpointLayout(folder).policy
    load_state_into(policy, load_tensors(path)[0], str(path))


def read_torch_file(path: Path) -> object:
    """torch.load with weights_only=True: tensors and plain data only, so a tampered file cannot run code."""
    if not path.is_file():
        raise InputError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise InputError(f"checkpoint file {path} is not readable ({last_line(exc)})") from None


def save_optimizers(folder: Path, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    torch.save({name: opt.state_dict() for name, opt in optimizers.items()}, CheckpointLayout(folder).optimizers)


def load_optimizers(folder: Path, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    saved = read_torch_file(CheckpointLayout(folder).optimizers)
    for name, optimizer in optimizers.items():
        if name not in saved:
            raise InputError(f"checkpoint {folder} holds no optimizer state for {name}")
        optimizer.load_state_dict(saved[name])


def rng_state() -> dict:
    """This process's torch (and CUDA), numpy and python RNG states, in types weights_only loading reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(folder: Path) -> None:
    torch.save(rng_state(), CheckpointLayout(folder).rng)


def load_rng(folder: Path) -> None:
    set_rng_state(read_torch_file(CheckpointLayout(folder).rng))
