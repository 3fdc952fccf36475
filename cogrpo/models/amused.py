"""aMUSEd (a UViT masked-token model over VQ-GAN codes, conditioned on CLIP text) behind the MaskedTokenModel
contract, loaded through diffusers from a local folder in the AmusedPipeline layout; nothing is downloaded. The
VQ-GAN, text and conditioning parts are shared with Meissonic (`cogrpo/models/meissonic.py`), which inherits them.

Only the UVit2D transformer is a registered submodule: it is the policy the learner trains and the weight channel
ships. The CLIP text encoder and the VQ-GAN are frozen tools held outside the module tree, so `parameters()` and
`state_dict()` hold the transformer alone.

Conditioning is one flat float vector per prompt, so trajectories, guidance batches and replays treat it like any
other tensor: [CLIP penultimate hidden states (L x D) | pooled projected text embedding (P) | micro-conditioning
(5: width, height, crop top, crop left, aesthetic score, in AmusedPipeline's order and with its defaults)].

Where our conventions differ from aMUSEd's own:
- mask id: ours is `codebook_size`; aMUSEd's mask token (`native_mask_id`) is the scheduler's `mask_token_id` (8255
  for the released checkpoints, whose codebook has 8192 codes). `forward` maps ours to theirs.
- guidance: the sampler's w in cond + w (cond - uncond) is AmusedPipeline's guidance_scale - 1
  (uncond + s (cond - uncond)); aMUSEd's default s = 10 is w = 9, and s <= 1 (no guidance) is w = 0.
- re-mask temperature: AmusedPipeline anneals it linearly from temperature[0] to temperature[1] over the steps;
  our hand schedule's remask_temperature g gives g (1 - t / steps), i.e. AmusedPipeline's temperature=(g, g / steps).
  AmusedPipeline has no token-sampling temperature (ours at 1.0).
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import numpy as np
import torch
from diffusers import AmusedPipeline, AmusedScheduler, UVit2DModel, VQModel
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from cogrpo.models.interface import ImageTokenizer, MaskedTokenModel
from cogrpo.proto.errors import InputError, first_line

COMPONENTS = ("transformer", "vqvae", "text_encoder", "tokenizer", "scheduler")
MICRO_CONDS = 5
AESTHETIC_SCORE = 6.0  # AmusedPipeline's default micro-conditioning
CROP = (0.0, 0.0)


def vq_scale(vq: VQModel) -> int:
    """Pixels per code along each side: the VQ-GAN halves the resolution between its levels."""
    return 2 ** (len(vq.config.block_out_channels) - 1)


class VQTokenizer(ImageTokenizer):
    """aMUSEd's VQ-GAN: RGB in [0, 1] <-> codebook indices on the latent grid (AmusedPipeline does not normalise)."""

    def __init__(self, vq: VQModel, grid: tuple[int, int]):
        if not vq.config.lookup_from_codebook:
            raise InputError("the vqvae must decode token ids through its codebook (lookup_from_codebook: true)")
        self.vq = vq.eval().requires_grad_(False)
        self.codebook_size = vq.config.num_vq_embeddings
        self.grid = grid
        self.scale = vq_scale(vq)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.grid[0] * self.scale, self.grid[1] * self.scale

    @torch.no_grad()
    def encode(self, images: np.ndarray) -> np.ndarray:
        if images.shape[1:3] != self.image_size:
            raise ValueError(f"images are {images.shape[1:3]}, this VQ-GAN encodes {self.image_size}")
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        _, _, (_, _, codes) = self.vq.quantize(self.vq.encode(pixels).latents)
        return codes.reshape(len(images), -1).numpy()

    @torch.no_grad()
    def decode(self, tokens: np.ndarray) -> np.ndarray:
        codes = torch.as_tensor(np.asarray(tokens), dtype=torch.long).reshape(-1, *self.grid)
        shape = (*codes.shape, self.vq.quantize.vq_embed_dim)
        pixels = self.vq.decode(codes, force_not_quantize=True, shape=shape).sample.clamp(0, 1)
        return (pixels.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()  # as AmusedPipeline's PIL output


class ClipText:
    """The frozen CLIP text tower, tokenised as AmusedPipeline does (padded to the tokenizer's maximum length)."""

    def __init__(self, encoder: CLIPTextModelWithProjection, tokenizer: CLIPTokenizer):
        self.encoder = encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.length = tokenizer.model_max_length
        self.hidden_size = encoder.config.hidden_size
        self.pooled_size = encoder.config.projection_dim

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate hidden states (B, L, D), pooled projected embedding (B, P))."""
        ids = self.tokenizer(prompts, return_tensors="pt", padding="max_length", truncation=True,
                             max_length=self.length).input_ids
        out = self.encoder(ids, return_dict=True, output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds


class VQTextModel(MaskedTokenModel):
    """A transformer over VQ-GAN codes conditioned on CLIP text: what aMUSEd and Meissonic share. Subclasses say
    how their transformer is called (`transformer_logits`)."""

    def __init__(self, transformer: torch.nn.Module, vq: VQModel, text: ClipText, grid: tuple[int, int],
                 mask_token_id: int, text_width: int):
        super().__init__()
        self.tokenizer = VQTokenizer(vq, grid)
        if transformer.config.codebook_size != self.tokenizer.codebook_size:
            raise InputError(f"the transformer predicts {transformer.config.codebook_size} codes, the vqvae has "
                             f"{self.tokenizer.codebook_size}")
        if text.hidden_size != text_width:
            raise InputError(f"the text encoder's width {text.hidden_size} is not the {text_width} the transformer "
                             "reads")
        self.transformer = transformer
        self.text = text
        self.native_mask_id = mask_token_id
        height, width = self.tokenizer.image_size
        self.micro_conds = torch.tensor([width, height, *CROP, AESTHETIC_SCORE])
        self._null = self.encode_prompts([""])

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        hidden, pooled = self.text(prompts)
        micro = self.micro_conds.expand(len(prompts), -1)
        return torch.cat([hidden.flatten(1), pooled, micro], dim=1)

    def unpack(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A packed conditioning -> (hidden states (B, L, D), pooled embedding (B, P), micro-conditioning (B, 5))."""
        text = self.text
        hidden, pooled, micro = cond.split([text.length * text.hidden_size, text.pooled_size, MICRO_CONDS], dim=1)
        return hidden.view(-1, text.length, text.hidden_size), pooled, micro

    def null_conditioning(self, batch: int) -> torch.Tensor:
        """The empty prompt, as the pipelines' unconditional branch."""
        return self._null.expand(batch, -1)

    @property
    def prompt_feature_dim(self) -> int:
        return self.text.pooled_size

    def prompt_features(self, cond: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled CLIP embedding, copied out of `cond` (a view would carry all of cond when pickled)."""
        return self.unpack(cond)[1].detach().clone()

    def token_table(self) -> torch.Tensor:
        """The VQ-GAN's codebook (frozen), and zeros for the mask id."""
        codebook = self.tokenizer.vq.quantize.embedding.weight.detach().cpu().float()
        return torch.cat([codebook, torch.zeros(1, codebook.shape[1])])

    @abstractmethod
    def transformer_logits(self, ids: torch.Tensor, hidden: torch.Tensor, pooled: torch.Tensor,
                           micro: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) with the native mask id -> logits (B, codebook, h, w)."""

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Conditioning is cast to the transformer's dtype (bf16 under DeepSpeed on GPUs) and the logits come back
        in it: the samplers and likelihoods take log-probs in float32 (a (B, N, V) float32 copy kept for backward
        would double the update's largest tensor)."""
        b = tokens.shape[0]
        hidden, pooled, micro = (part.to(self.transformer.dtype) for part in self.unpack(cond))
        ids = tokens.masked_fill(tokens == self.mask_id, self.native_mask_id).view(b, *self.grid)
        logits = self.transformer_logits(ids, hidden, pooled, micro)
        return logits.permute(0, 2, 3, 1).reshape(b, self.num_tokens, -1)


class AmusedModel(VQTextModel):
    kind = "amused"

    def __init__(self, transformer: UVit2DModel, vq: VQModel, text: ClipText, mask_token_id: int):
        size = transformer.config.sample_size
        super().__init__(transformer, vq, text, (size, size), mask_token_id, transformer.config.encoder_hidden_size)

    def transformer_logits(self, ids, hidden, pooled, micro):
        return self.transformer(ids, encoder_hidden_states=hidden, pooled_text_emb=pooled, micro_conds=micro)

    def save_pipeline(self, base: Path, out: Path) -> None:
        """AmusedPipeline.save_pretrained of this transformer with the base folder's other parts: a folder diffusers
        loads as it loads the release."""
        scheduler = AmusedScheduler.from_pretrained(base / "scheduler", local_files_only=True)
        AmusedPipeline(vqvae=self.tokenizer.vq, text_encoder=self.text.encoder, tokenizer=self.text.tokenizer,
                       transformer=self.transformer, scheduler=scheduler).save_pretrained(out)


def load_shared_components(root: str | Path, kind: str) -> tuple[Path, VQModel, ClipText, int]:
    """(folder, VQ-GAN, CLIP text tower, native mask id) from a local folder in the diffusers pipeline layout that
    aMUSEd and Meissonic share; never the hub. The transformer, which differs, is the caller's."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{kind} folder not found: {root}")
    missing = [name for name in COMPONENTS if not (root / name).is_dir()]
    if missing:
        raise InputError(f"{kind} folder {root} has no {missing[0]}/ (expected the diffusers pipeline layout)")
    local = {"local_files_only": True}
    try:
        vq = VQModel.from_pretrained(root / "vqvae", **local)
        encoder = CLIPTextModelWithProjection.from_pretrained(root / "text_encoder", **local)
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer", **local)
        # only the mask id is read: Meissonic's scheduler class is its own, with aMUSEd's config
        mask_token_id = AmusedScheduler.load_config(root / "scheduler", **local)["mask_token_id"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot load {kind} from {root}: {first_line(exc)}") from None
    return root, vq, ClipText(encoder, tokenizer), mask_token_id


def load_amused(path: str | Path) -> AmusedModel:
    """Every component from the local folder (the layout `AmusedPipeline.save_pretrained` writes)."""
    root, vq, text, mask_token_id = load_shared_components(path, "aMUSEd")
    try:
        transformer = UVit2DModel.from_pretrained(root / "transformer", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load aMUSEd from {root}: {first_line(exc)}") from None
    return AmusedModel(transformer, vq, text, mask_token_id)
