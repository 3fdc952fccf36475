"""Weight files on disk: safetensors only for what the project writes (atomic: a reader never sees half a file),
and released reward weights read with torch.load(weights_only=True), so no file runs pickled code."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from cogrpo.proto.errors import InputError, first_line


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Atomic safetensors write: a reader never sees a half-written file. Tensors that share storage (a model's tied
    embedding and output weights) are written each under its own name, as the strict loader expects them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        seen: set[int] = set()
        out = {}
        for name, tensor in tensors.items():
            tensor = tensor.detach().contiguous().cpu()
            storage = tensor.untyped_storage().data_ptr()
            out[name] = tensor.clone() if storage in seen else tensor
            seen.add(storage)
        save_file(out, tmp, metadata=metadata)
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
        raise InputError(f"checkpoint {path} is not a readable torch file ({first_line(exc)})") from None
    if not isinstance(payload, dict):
        raise InputError(f"checkpoint {path} holds a {type(payload).__name__}, not a state dict")
    return payload.get("state_dict", payload)


def check_fits(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source: str) -> None:
    """The tensors are exactly the expected ones by name and shape (`expected` may live on the meta device, so a
    model can be checked before it is built); name the first mismatch."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        what = f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}"
        raise InputError(f"checkpoint {source} does not fit the model: {what}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise InputError(f"checkpoint {source} does not fit the model: {name} has shape "
                             f"{tuple(tensor.shape)}, expected {tuple(expected[name].shape)}")


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that names the first mismatch instead of dumping a traceback. Floating-point weights must come
    as floating-point numbers, all finite (an int8 or NaN tensor is refused, not cast or loaded)."""
    expected = module.state_dict()
    check_fits(expected, tensors, source)
    for name, tensor in tensors.items():
        if expected[name].is_floating_point() != tensor.is_floating_point():
            raise InputError(f"checkpoint {source}: {name} holds {str(tensor.dtype)[6:]}, the model's is "
                             f"{str(expected[name].dtype)[6:]}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"checkpoint {source}: {name} holds values that are not finite (NaN or infinite)")
    module.load_state_dict(tensors)
