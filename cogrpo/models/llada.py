"""Masked diffusion language models from a local folder behind the MaskedTokenModel contract: LLaDA (its modeling
code ships in the folder, so loading it runs that code and needs `model.trust_folder_code`), or any transformers
masked LM (`AutoModelForMaskedLM`, BERT-style). Nothing is downloaded.

- Prompts: the tokenizer's chat template when it has one (LLaDA-Instruct's), then its ids left-padded to
  `model.prompt_tokens`; a longer prompt is refused. The completion is `sampler.length` positions after it, and the
  whole sequence goes through the model with full attention (padding masked out), as LLaDA's generate does.
- Mask id: ours is `codebook_size` (one past the vocabulary); the model's own mask token (LLaDA's `<|mdm_mask|>`,
  a BERT's `[MASK]`) is what `forward` feeds it, and its logit is never sampled.
- Completions are decoded up to the first end-of-sequence token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from cogrpo.models.interface import MaskedTokenModel
from cogrpo.proto.errors import InputError, clip, first_line

LLADA_MASK = "<|mdm_mask|>"


class FolderTextModel(MaskedTokenModel):
    kind = "llada"

    def __init__(self, lm: nn.Module, text_tokenizer, length: int, prompt_tokens: int):
        super().__init__()
        self.lm, self.text_tokenizer = lm, text_tokenizer
        self.vocab = lm.get_input_embeddings().num_embeddings
        native = text_tokenizer.mask_token_id
        if native is None:
            native = text_tokenizer.convert_tokens_to_ids(LLADA_MASK)
        if native is None or not 0 <= native < self.vocab or native == text_tokenizer.unk_token_id:
            raise InputError(f"the tokenizer has no mask token (a mask_token, or {LLADA_MASK})")
        self.native_mask_id = native
        self.eos_id = text_tokenizer.eos_token_id
        self.pad_id = text_tokenizer.pad_token_id if text_tokenizer.pad_token_id is not None else self.eos_id
        if self.pad_id is None:
            raise InputError("the tokenizer has neither a padding nor an end-of-sequence token")
        self.length, self.prompt_tokens = length, prompt_tokens

    @property
    def codebook_size(self) -> int:
        return self.vocab

    @property
    def num_tokens(self) -> int:
        return self.length

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            if not prompt.strip():
                raise InputError("empty prompt")
            text = prompt
            if getattr(self.text_tokenizer, "chat_template", None):
                text = self.text_tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                               add_generation_prompt=True, tokenize=False)
            ids = self.text_tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > self.prompt_tokens:
                raise InputError(f"prompt {clip(prompt)!r} has {len(ids)} tokens, model.prompt_tokens allows "
                                 f"{self.prompt_tokens}")
            rows.append([self.pad_id] * (self.prompt_tokens - len(ids)) + ids)
        return torch.tensor(rows, dtype=torch.long)

    def null_conditioning(self, batch: int) -> torch.Tensor:
        """The prompt all masked, LLaDA's unconditional input for guidance."""
        return torch.full((batch, self.prompt_tokens), self.mask_id, dtype=torch.long)

    @property
    def prompt_feature_dim(self) -> int:
        return self.lm.get_input_embeddings().embedding_dim

    @torch.no_grad()
    def prompt_features(self, cond: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """The mean input embedding of the prompt's tokens (padding and masks excluded): (B, D), float32."""
        table = self.lm.get_input_embeddings().weight if table is None else table
        real = (cond != self.pad_id) & (cond < self.vocab)
        rows = table[cond.clamp(max=self.vocab - 1)].float() * real[..., None]
        return rows.sum(1) / real.sum(1, keepdim=True).clamp(min=1)

    def token_table(self) -> torch.Tensor:
        weight = self.lm.get_input_embeddings().weight.detach().cpu().float()
        return torch.cat([weight, torch.zeros(1, weight.shape[1])])

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Logits (B, length, vocab) in the model's dtype at the completion's positions (log-probs are taken in
        float32 by their callers); the model's own mask token gets -inf. The prompt's left padding is masked out
        of attention."""
        ids = torch.cat([cond, tokens], 1)
        ids = ids.masked_fill(ids == self.mask_id, self.native_mask_id)
        attention = torch.ones_like(ids)
        attention[:, :cond.shape[1]] = (torch.cumsum(cond != self.pad_id, 1) > 0).long()  # left padding only
        logits = self.lm(input_ids=ids, attention_mask=attention).logits[:, cond.shape[1]:, :self.vocab]
        return logits.index_fill(-1, torch.tensor([self.native_mask_id], device=logits.device), float("-inf"))

    def decode_texts(self, tokens: torch.Tensor) -> list[str]:
        out = []
        for row in tokens.tolist():
            if self.eos_id is not None and self.eos_id in row:
                row = row[:row.index(self.eos_id)]
            out.append(self.text_tokenizer.decode([i for i in row if i < self.vocab], skip_special_tokens=True))
        return out


def load_llada(path: str | Path, length: int, prompt_tokens: int, trust_folder_code: bool) -> FolderTextModel:
    """The folder's model and tokenizer, local files only. A folder whose config maps its classes to its own code
    (`auto_map`, as LLaDA's does) is loaded only with trust_folder_code."""
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    root = Path(path)
    config_file = root / "config.json"
    if not config_file.is_file():
        raise InputError(f"model.path {root}: no config.json (a transformers model folder is expected)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        config = None
    if not isinstance(config, dict):
        raise InputError(f"{config_file} is not a JSON object")
    folder_code = "auto_map" in config
    if folder_code and not trust_folder_code:
        raise InputError(f"model.path {root} ships its own model code (auto_map in config.json), and loading it runs "
                         "that code: set model.trust_folder_code: true if you trust that folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True, trust_remote_code=folder_code)
        if folder_code:
            lm = AutoModel.from_pretrained(root, local_files_only=True, trust_remote_code=True)
        else:
            lm = AutoModelForMaskedLM.from_pretrained(root, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - the folder's own code may raise anything while it loads
        raise InputError(f"model.path {root}: cannot load it ({type(exc).__name__}: "
                         f"{clip(first_line(exc), 160)})") from None
    return FolderTextModel(lm, tokenizer, length, prompt_tokens)
