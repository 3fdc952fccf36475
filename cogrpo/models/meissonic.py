"""Meissonic (a Flux-style MM-DiT over VQ-GAN codes, conditioned on CLIP text) behind the MaskedTokenModel contract.

Its snapshot has aMUSEd's layout (transformer/, vqvae/, text_encoder/, tokenizer/, scheduler/), and the VQ-GAN,
text tower, conditioning and mask-id mapping are aMUSEd's (`VQTextModel`). The transformer class is not part of
diffusers: it ships as Python in Meissonic's repository (`src/transformer.py`, class `Transformer2DModel`), which
must be copied into the folder as `src/transformer.py`. Loading imports that file, i.e. runs its code, so the config
refuses it unless `model.trust_folder_code: true`.

Where the call differs from aMUSEd's:
- the transformer also takes a timestep and rotary position ids for the text (`txt_ids`, zeros) and image tokens
  (`img_ids`: (0, row, col) per token it attends over). Meissonic's pipeline halves the latent grid for them at
  1024 px, where its released transformer downsamples by 2; here the transformer's own `downsample` flag decides;
- timestep: Meissonic's pipeline passes the countdown step index (steps - 1 - t), its training script the masking
  rate x 1000. Our contract gives a model the canvas alone, so it gets the training-time value: each sample's masked
  fraction x 1000. The canvas fixes it, so replays reproduce it exactly; samples are not bit-identical to
  Meissonic's Pipeline, which would need the step index;
- resolution: the transformer has no fixed size; the grid is resolution / VQ scale (1024 / 16 = 64 x 64 for the
  release).

Meissonic's own defaults (its inference.py and Pipeline): 1024 px, 48 steps, guidance_scale 9 (our guidance w = 8),
re-mask temperature annealed linearly from 2 to 0 (our remask_temperature 2), aesthetic score 6, no crop, a cosine
mask schedule (ours). configs/meissonic-*.yaml use them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path

import torch
from diffusers import VQModel

from cogrpo.models.amused import ClipText, VQTextModel, load_shared_components, vq_scale
from cogrpo.proto.errors import InputError, first_line

CODE_FILE = Path("src") / "transformer.py"
CLASS_NAME = "Transformer2DModel"
TIMESTEP_SCALE = 1000.0  # Meissonic's training passes the masking rate times this


def _position_ids(rows: int, cols: int) -> torch.Tensor:
    """(rows * cols, 3): (0, row, col) per token, row-major, as Meissonic's pipeline lays out image ids."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([torch.zeros_like(r), r, c], dim=-1).reshape(-1, 3).float()


class MeissonicModel(VQTextModel):
    kind = "meissonic"

    def __init__(self, transformer: torch.nn.Module, vq: VQModel, text: ClipText, mask_token_id: int,
                 resolution: int):
        scale = vq_scale(vq)
        if resolution % scale:
            raise InputError(f"resolution {resolution} is not a multiple of the VQ-GAN's {scale} pixels per code")
        size = resolution // scale
        super().__init__(transformer, vq, text, (size, size), mask_token_id, transformer.config.joint_attention_dim)
        tokens = size // 2 if transformer.config.downsample else size
        self.img_ids = _position_ids(tokens, tokens)
        self.txt_ids = torch.zeros(text.length, 3)

    def transformer_logits(self, ids, hidden, pooled, micro):
        masked = (ids == self.native_mask_id).flatten(1).float().mean(1)
        return self.transformer(hidden_states=ids, encoder_hidden_states=hidden, pooled_projections=pooled,
                                timestep=masked * TIMESTEP_SCALE, img_ids=self.img_ids.to(hidden.device),
                                txt_ids=self.txt_ids.to(hidden.device), micro_conds=micro)

    def save_pipeline(self, base: Path, out: Path) -> None:
        """The base snapshot as it is (its pipeline code, src/ and every part) with this transformer saved over its
        transformer/: diffusers has no Meissonic pipeline, so the folder's own code loads it, as it loads the
        release."""
        shutil.copytree(base, out, ignore=lambda folder, names: ["transformer"] if Path(folder) == base else [])
        self.transformer.save_pretrained(out / "transformer")


def import_class_from_file(path: Path, name: str) -> type:
    """Import `name` from a Python file outside any package. The module name is unique to the file's location,
    so two folders never shadow each other, and it is registered in sys.modules so the class pickles by reference."""
    module_name = f"cogrpo_folder_code_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the folder's code may fail in any way; say so in one line
            del sys.modules[module_name]
            raise InputError(f"cannot import {path}: {type(exc).__name__}: {first_line(exc)}") from None
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        raise InputError(f"{path} defines no class {name}")
    return cls


def load_meissonic(path: str | Path, resolution: int, trust_folder_code: bool) -> MeissonicModel:
    """Every component from the local folder; the transformer through the folder's own class."""
    if not trust_folder_code:
        raise InputError("loading Meissonic runs the code in its folder: set model.trust_folder_code: true")
    root, vq, text, mask_token_id = load_shared_components(path, "Meissonic")
    code = root / CODE_FILE
    if not code.is_file():
        raise InputError(f"Meissonic folder {root} has no {CODE_FILE} (copy it from Meissonic's repository)")
    transformer_class = import_class_from_file(code, CLASS_NAME)
    try:
        transformer = transformer_class.from_pretrained(root / "transformer", local_files_only=True)
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"cannot load Meissonic's transformer from {root}: {first_line(exc)}") from None
    return MeissonicModel(transformer, vq, text, mask_token_id, resolution)
