"""Model weights on disk: safetensors only (no pickle), with the architecture in the file's metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cogrpo.data.weights import check_fits, load_state_into, load_tensors, save_tensors
from cogrpo.models.tiny_flow import TinyFlow
from cogrpo.models.tiny_mdlm import TinyMDLM
from cogrpo.models.tiny_mdm import TinyMDM
from cogrpo.proto.config import FOLDER_MODELS, ModelConfig, TinyArch
from cogrpo.proto.errors import InputError
from cogrpo.proto.layout import exported_model_of

BUILTIN_DIR = Path(__file__).parent / "weights"
BUILTIN_PREFIX = "builtin:"
# built from an architecture, trained from scratch
TINY_MODELS = {"tiny_mdm": TinyMDM, "tiny_flow": TinyFlow, "tiny_mdlm": TinyMDLM}
# folder models whose fine-tuned transformer `export_pipeline` writes back into their pipeline's folder layout
PIPELINE_KINDS = ("amused", "meissonic")


def resolve_checkpoint_path(spec: str) -> Path:
    """A safetensors file, "builtin:NAME" for a shipped one, or a run directory (its latest checkpoint's averaged
    model if the run kept one, else its model)."""
    if spec.startswith(BUILTIN_PREFIX):
        return BUILTIN_DIR / f"{spec[len(BUILTIN_PREFIX):]}.safetensors"
    path = Path(spec)
    return exported_model_of(path) if path.is_dir() else path


def save_model(model: torch.nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None,
               **extra: str) -> None:
    """state: the full tensors when the module's own are partitioned (ZeRO-3); the module's state dict otherwise.
    A tiny model's file also records its architecture; an aMUSEd file holds the transformer over its base folder."""
    metadata = {"kind": model.kind, **extra}
    if model.kind in TINY_MODELS:
        metadata["arch"] = model.arch.model_dump_json()
    save_tensors(path, model.state_dict() if state is None else state, metadata)


def read_checkpoint(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, metadata = load_tensors(path)
    if metadata.get("kind") != kind:
        raise InputError(f"checkpoint {path} holds kind {metadata.get('kind')!r}, not {kind!r}")
    return tensors, metadata


def load_model(path: str | Path, kind: str = "tiny_mdm") -> TinyMDM | TinyFlow | TinyMDLM:
    tensors, metadata = read_checkpoint(path, kind)
    try:
        arch = TinyArch.model_validate(json.loads(metadata["arch"]))
    except (KeyError, ValueError) as exc:
        raise InputError(f"checkpoint {path} has no valid architecture metadata ({exc})") from None
    with torch.device("meta"):  # the architecture the metadata claims, checked against the tensors before it is built
        check_fits(TINY_MODELS[kind](arch).state_dict(), tensors, str(path))
    model = TINY_MODELS[kind](arch)
    load_state_into(model, tensors, str(path))
    return model


def _load_folder_model(config: ModelConfig, length: int | None) -> torch.nn.Module:
    """diffusers and transformers are slow to import: only folder models import them."""
    if config.kind == "llada":
        from cogrpo.models.llada import load_llada

        return load_llada(config.path, length, config.prompt_tokens, config.trust_folder_code)
    if config.kind == "amused":
        from cogrpo.models.amused import load_amused

        return load_amused(config.path)
    if config.kind == "sd3":
        from cogrpo.models.sd3 import load_sd3

        return load_sd3(config.path, config.resolution)
    if config.kind == "flux":
        from cogrpo.models.flux import load_flux

        return load_flux(config.path, config.resolution, config.embedded_guidance)
    from cogrpo.models.meissonic import load_meissonic

    return load_meissonic(config.path, config.resolution, config.trust_folder_code)


def build_model(config: ModelConfig, length: int | None = None) -> torch.nn.Module:
    """The configured model. TinyMDM, TinyFlow: loaded from a checkpoint (whose metadata fixes the architecture), or
    fresh.
    aMUSEd, Meissonic, SD3, FLUX, LLaDA: their local folder, then the fine-tuned transformer weights of `checkpoint` if
    one is named. length: a folder text model's completion positions (sampler.length)."""
    if config.kind in FOLDER_MODELS:
        model = _load_folder_model(config, length)
        if config.checkpoint is not None:
            path = resolve_checkpoint_path(config.checkpoint)
            load_state_into(model, read_checkpoint(path, config.kind)[0], str(path))
        return model
    if config.checkpoint is None:
        return TINY_MODELS[config.kind](config.arch)
    return load_model(resolve_checkpoint_path(config.checkpoint), config.kind)


def export_pipeline(config: ModelConfig, out: Path) -> None:
    """The model of `config` (its base folder with `checkpoint`'s fine-tuned weights loaded strictly over it) saved
    as a folder of its pipeline's layout at `out`, which must not exist yet."""
    if config.kind not in PIPELINE_KINDS:
        raise InputError(f"model.kind {config.kind} has no pipeline folder to export; the kinds that have one: "
                         f"{', '.join(PIPELINE_KINDS)}")
    build_model(config).save_pipeline(Path(config.path), out)
