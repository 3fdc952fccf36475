"""RL checkpoints: checkpoints/iter_NNNNNN/{model,schedule_policy}.safetensors + state.json, and a `latest`
marker that is rewritten atomically only after the folder is complete."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from cogrpo.models.checkpoint import LATEST, MODEL_FILE, load_state_into, load_tensors, save_model, save_tensors
from cogrpo.models.schedule_policy import SchedulePolicy
from cogrpo.proto.config import SchedulePolicyConfig
from cogrpo.proto.errors import InputError

POLICY_FILE = "schedule_policy.safetensors"
STATE_FILE = "state.json"


def save_checkpoint(run_dir: Path, iteration: int, model, policy: SchedulePolicy, state: dict,
                    model_state: dict | None = None) -> Path:
    root = Path(run_dir) / "checkpoints"
    name = f"iter_{iteration:06d}"
    staging = root / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_model(model, staging / MODEL_FILE, model_state)
    save_tensors(staging / POLICY_FILE, policy.state_dict(), {"config": policy.config.model_dump_json()})
    (staging / STATE_FILE).write_text(json.dumps({"iteration": iteration, **state}))
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    marker = root / f".{LATEST}.tmp"
    marker.write_text(name)
    os.replace(marker, root / LATEST)
    return final


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
