"""RL checkpoints: `checkpoints/iter_NNNNNN/` holds everything a run needs to continue exactly where it stopped, and
a `latest` marker names the newest complete one.

Each part is written by the process that owns it into a staging folder (`.iter_NNNNNN.partial`); the driver then
writes `state.json`, renames the folder and rewrites `latest` (temp file + os.replace), so a job killed at any
moment leaves `latest` naming a complete checkpoint:

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

import json
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from cogrpo.learner.averaging import WeightAverage
from cogrpo.models.checkpoint import (AVERAGE_FILE, LATEST, MODEL_FILE, load_state_into, load_tensors, save_model,
                                     save_tensors)
from cogrpo.models.schedule_policy import SchedulePolicy
from cogrpo.proto.config import SchedulePolicyConfig
from cogrpo.proto.errors import InputError

POLICY_FILE = "schedule_policy.safetensors"
OPTIMIZERS_FILE = "optimizers.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "state.json"
DEEPSPEED_DIR = "deepspeed"


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _folder_name(iteration: int) -> str:
    return f"iter_{iteration:06d}"


def _staging_path(run_dir: str | Path, iteration: int) -> Path:
    return checkpoints_root(run_dir) / f".{_folder_name(iteration)}.partial"


def staging_folder(run_dir: str | Path, iteration: int) -> Path:
    """An empty folder for the parts of the checkpoint at `iteration` (a leftover from a killed job is cleared)."""
    staging = _staging_path(run_dir, iteration)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def commit_checkpoint(run_dir: str | Path, iteration: int, state: dict) -> Path:
    """Complete the staged checkpoint: its state.json last, then the folder under its final name, then `latest`."""
    staging = _staging_path(run_dir, iteration)
    (staging / STATE_FILE).write_text(json.dumps({"iteration": iteration, **state}))
    final = checkpoints_root(run_dir) / _folder_name(iteration)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    mark_latest(final)
    return final


def mark_latest(folder: Path) -> None:
    """Point `latest` at a complete checkpoint folder, atomically."""
    marker = folder.parent / f".{LATEST}.tmp"
    marker.write_text(folder.name)
    os.replace(marker, folder.parent / LATEST)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    marker = checkpoints_root(run_dir) / LATEST
    return marker.parent / marker.read_text().strip() if marker.is_file() else None


def read_state(folder: Path) -> dict:
    """The driver's state of a complete checkpoint folder."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise InputError(f"{folder} is not a complete checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(path.read_text())
        int(state["iteration"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"checkpoint state {path} is not valid ({exc})") from None
    return state


def save_weights(folder: Path, model, policy: SchedulePolicy, model_state: dict | None = None,
                 average: WeightAverage | None = None) -> None:
    """model_state: the full tensors when the module's own are partitioned (ZeRO-3). An average that has started
    is written as a whole model file beside the live one."""
    save_model(model, folder / MODEL_FILE, model_state)
    save_tensors(folder / POLICY_FILE, policy.state_dict(), {"config": policy.config.model_dump_json()})
    if average is not None and average.state is not None:
        save_model(model, folder / AVERAGE_FILE, average.state)


def load_weights(folder: Path, model: torch.nn.Module | None, policy: SchedulePolicy,
                 average: WeightAverage | None = None) -> None:
    """What save_weights wrote, into live modules; model None where its weights come from elsewhere (DeepSpeed's
    checkpoint, under Ray)."""
    for module, name in ((model, MODEL_FILE), (policy, POLICY_FILE)):
        if module is not None:
            path = Path(folder) / name
            load_state_into(module, load_tensors(path)[0], str(path))
    if average is not None and (Path(folder) / AVERAGE_FILE).is_file():
        average.state = load_tensors(Path(folder) / AVERAGE_FILE)[0]


def load_policy(folder: Path, prompt_dim: int) -> SchedulePolicy | None:
    """The schedule policy saved beside a checkpoint's model file, or None if there is none."""
    path = Path(folder) / POLICY_FILE
    if not path.is_file():
        return None
    tensors, metadata = load_tensors(path)
    try:
        config = SchedulePolicyConfig.model_validate_json(metadata["config"])
    except (KeyError, ValueError) as exc:
        raise InputError(f"schedule policy {path} has no valid config metadata ({exc})") from None
    policy = SchedulePolicy(config, prompt_dim)
    load_state_into(policy, tensors, str(path))
    return policy


def read_torch_file(path: Path) -> object:
    """torch.load with weights_only=True: tensors and plain data only, so a tampered file cannot run code."""
    if not path.is_file():
        raise InputError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise InputError(f"checkpoint file {path} is not readable ({str(exc).strip().splitlines()[-1]})") from None


def save_optimizers(folder: Path, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    torch.save({name: opt.state_dict() for name, opt in optimizers.items()}, folder / OPTIMIZERS_FILE)


def load_optimizers(folder: Path, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    saved = read_torch_file(Path(folder) / OPTIMIZERS_FILE)
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
    torch.save(rng_state(), folder / RNG_FILE)


def load_rng(folder: Path) -> None:
    set_rng_state(read_torch_file(Path(folder) / RNG_FILE))
