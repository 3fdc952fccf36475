"""Model weights on disk: safetensors only (no pickle), with the architecture in the file's metadata."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from cogrpo.models.interface import MaskedTokenModel
from cogrpo.models.tiny_mdm import TinyMDM
from cogrpo.proto.config import FOLDER_MODELS, ModelConfig, TinyMDMArch
from cogrpo.proto.errors import InputError

BUILTIN_DIR = Path(__file__).parent / "weights"
BUILTIN_PREFIX = "builtin:"


MODEL_FILE = "model.safetensors"
AVERAGE_FILE = "averaged_model.safetensors"  # a run's exported model when it keeps an average
LATEST = "latest"


def resolve_checkpoint_path(spec: str) -> Path:
    """A safetensors file, "builtin:NAME" for a shipped one, or a run directory (its latest checkpoint's averaged
    model if the run kept one, else its model)."""
    if spec.startswith(BUILTIN_PREFIX):
        return BUILTIN_DIR / f"{spec[len(BUILTIN_PREFIX):]}.safetensors"
    path = Path(spec)
    if path.is_dir():
        marker = path / "checkpoints" / LATEST
        if not marker.is_file():
            raise InputError(f"run directory {path} has no complete checkpoint (no checkpoints/{LATEST})")
        folder = path / "checkpoints" / marker.read_text().strip()
        return folder / AVERAGE_FILE if (folder / AVERAGE_FILE).is_file() else folder / MODEL_FILE
    return path


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Atomic safetensors write: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"checkpoint {path} is not a valid safetensors file ({exc})") from None
    return tensors, metadata


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Released reward weights: a torch file holding a state dict (or {"state_dict": ...}), read with weights_only
    so no pickled code runs; or a safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_tensors(path)[0]
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise InputError(f"checkpoint {path} is not a readable torch file ({str(exc).splitlines()[0]})") from None
    if not isinstance(payload, dict):
        raise InputError(f"checkpoint {path} holds a {type(payload).__name__}, not a state dict")
    return payload.get("state_dict", payload)


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that names the first mismatch instead of dumping a traceback."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        what = f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}"
        raise InputError(f"checkpoint {source} does not fit the model: {what}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise InputError(f"checkpoint {source} does not fit the model: {name} has shape "
                             f"{tuple(tensor.shape)}, expected {tuple(expected[name].shape)}")
    module.load_state_dict(tensors)


def save_model(model: MaskedTokenModel, path: str | Path, state: dict[str, torch.Tensor] | None = None,
               **extra: str) -> None:
    """state: the full tensors when the module's own are partitioned (ZeRO-3); the module's state dict otherwise.
    A TinyMDM file also records its architecture; an aMUSEd file holds the transformer over its base folder."""
    metadata = {"kind": model.kind, **extra}
    if isinstance(model, TinyMDM):
        metadata["arch"] = model.arch.model_dump_json()
    save_tensors(path, model.state_dict() if state is None else state, metadata)


def _read_checkpoint(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, metadata = load_tensors(path)
    if metadata.get("kind") != kind:
        raise InputError(f"checkpoint {path} holds kind {metadata.get('kind')!r}, not {kind!r}")
    return tensors, metadata


def load_model(path: str | Path) -> TinyMDM:
    tensors, metadata = _read_checkpoint(path, "tiny_mdm")
    try:
        arch = TinyMDMArch.model_validate(json.loads(metadata["arch"]))
    except (KeyError, ValueError) as exc:
        raise InputError(f"checkpoint {path} has no valid architecture metadata ({exc})") from None
    model = TinyMDM(arch)
    load_state_into(model, tensors, str(path))
    return model


def _load_folder_model(config: ModelConfig) -> MaskedTokenModel:
    """diffusers is optional and slow to import: only folder models import it."""
    if config.kind == "amused":
        from cogrpo.models.amused import load_amused

        return load_amused(config.path)
    from cogrpo.models.meissonic import load_meissonic

    return load_meissonic(config.path, config.resolution, config.trust_folder_code)


def build_model(config: ModelConfig) -> MaskedTokenModel:
    """The configured model. TinyMDM: loaded from its checkpoint (whose metadata fixes the architecture), or fresh.
    aMUSEd, Meissonic: their local folder, then the fine-tuned transformer weights of `checkpoint` if one is named."""
    if config.kind in FOLDER_MODELS:
        model = _load_folder_model(config)
        if config.checkpoint is not None:
            path = resolve_checkpoint_path(config.checkpoint)
            load_state_into(model, _read_checkpoint(path, config.kind)[0], str(path))
        return model
    if config.checkpoint is None:
        return TinyMDM(config.arch)
    return load_model(resolve_checkpoint_path(config.checkpoint))
