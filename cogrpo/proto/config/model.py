"""The model side of the config: the backbone and its family, the sampler's hand schedule, the schedule policy and
the reward terms."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from cogrpo.proto.config.base import Section, Steps
from cogrpo.proto.kinds import FAMILIES, FAMILY_OF_KIND
from cogrpo.proto.plugins import is_plugin_ref


class TinyArch(Section):
    d_model: int = Field(128, gt=0)
    layers: int = Field(4, gt=0)
    heads: int = Field(4, gt=0)
    ff_mult: int = Field(4, gt=0)
    conv_layers: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyArch:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        return self


# backbones loaded from a local folder of pretrained components
FOLDER_MODELS = ("amused", "meissonic", "sd3", "flux", "llada")


class ModelConfig(Section):
    # masked_image or flow_image (implied by kind), or "package.module:Class" for a family of one's own (importing
    # it runs it)
    family: str | None = None
    # none: a family of one's own
    kind: Literal["tiny_mdm", "amused", "meissonic", "tiny_flow", "sd3", "flux", "tiny_mdlm", "llada"] | None = \
        "tiny_mdm"
    # tiny_mdm, tiny_flow, tiny_mdlm: a safetensors file, "builtin:<kind>" for the shipped checkpoint, or null for a
    # fresh random model.
    # amused, meissonic, sd3, flux: null for the folder's own weights, or fine-tuned ones (a safetensors file or a run
    # directory).
    checkpoint: str | None = "builtin:tiny_mdm"
    arch: TinyArch = TinyArch()  # tiny_mdm, tiny_flow, tiny_mdlm: the architecture of a fresh model
    # amused, sd3, flux: a local folder in the diffusers AmusedPipeline (StableDiffusion3Pipeline, FluxPipeline)
    # layout; meissonic: a local Meissonic snapshot with its src/transformer.py. Contents are checked when the
    # model is built, on the machine that builds it (a driver need not hold the weights its GPU workers load).
    path: str | None = None
    # meissonic: its transformer class is Python code inside the folder, and loading it runs that code; so it is
    # refused unless this is true. llada: the same for a folder that ships its model code (LLaDA's auto_map); a
    # plain transformers masked LM needs no trust.
    trust_folder_code: bool = False
    # llada: the prompt's tokens (chat template included), left-padded to this many; a longer prompt is refused
    prompt_tokens: int | None = Field(None, ge=1, le=32768)
    # meissonic, flux: pixels per side (1024 by default: their transformers have no fixed size); sd3: by default
    # the transformer's sample size
    resolution: int | None = Field(None, gt=0)
    # flux: the guidance scale a guidance-distilled transformer (FLUX.1-dev) reads as an input, FluxPipeline's
    # guidance_scale (3.5 by default); ignored by a transformer without guidance embedding
    embedded_guidance: float | None = Field(None, ge=0)
    options: dict[str, Any] = {}  # a family of one's own: its model's settings, as its class reads them

    @model_validator(mode="before")
    @classmethod
    def _defaults_follow_the_family(cls, data: Any) -> Any:
        """A family of one's own has no built-in kind or checkpoint; a built-in kind implies its family. The
        shipped TinyMDM default means nothing for a folder model: its default checkpoint is none, and Meissonic's
        resolution is the released 1024."""
        if not isinstance(data, dict):
            return data
        if is_plugin_ref(data.get("family")):
            return {"kind": None, "checkpoint": None, **data}
        if data.get("kind") in ("tiny_flow", "tiny_mdlm"):
            data = {"checkpoint": f"builtin:{data['kind']}", **data}
        if data.get("kind") in FOLDER_MODELS:
            data = {"checkpoint": None, **data}
            if data["kind"] in ("meissonic", "flux"):
                data = {"resolution": 1024, **data}
            if data["kind"] == "flux":
                data = {"embedded_guidance": 3.5, **data}
            if data["kind"] == "llada":
                data = {"prompt_tokens": 256, **data}
        kind = data.get("kind", "tiny_mdm")
        return {"family": FAMILY_OF_KIND.get(kind, kind) if isinstance(kind, str) else None, **data}

    @model_validator(mode="after")
    def _fields_match_kind(self) -> ModelConfig:
        if is_plugin_ref(self.family):
            if self.kind is not None:
                raise ValueError(f"kind {self.kind} is a built-in backbone: a family of one's own builds its own")
            return self
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r} (built in: {', '.join(FAMILIES)}; or "
                             "package.module:Class for one of your own)")
        if self.kind is None or FAMILY_OF_KIND[self.kind] != self.family:
            raise ValueError(f"kind {self.kind} is not a backbone of family {self.family} "
                             f"({', '.join(FAMILIES[self.family].kinds)})")
        if self.options:
            raise ValueError("options are for a family of one's own; built-in backbones take named fields")
        folder = self.kind in FOLDER_MODELS
        if folder and not self.path:
            raise ValueError(f"kind {self.kind} needs path: the local {self.kind} folder")
        if not folder and self.path is not None:
            raise ValueError(f"path is only for kinds {', '.join(FOLDER_MODELS)}, not {self.kind}")
        if folder and (self.checkpoint or "").startswith("builtin:"):
            raise ValueError(f"checkpoint {self.checkpoint} is a shipped tiny model's, not {self.kind} weights")
        if self.kind not in ("meissonic", "llada") and self.trust_folder_code:
            raise ValueError("trust_folder_code is only for kinds meissonic and llada")
        if self.kind != "llada" and self.prompt_tokens is not None:
            raise ValueError("prompt_tokens is only for kind llada")
        if self.kind not in ("meissonic", "sd3", "flux") and self.resolution is not None:
            raise ValueError("resolution is only for kinds meissonic, sd3 and flux")
        if self.kind != "flux" and self.embedded_guidance is not None:
            raise ValueError("embedded_guidance is only for kind flux")
        if self.kind == "meissonic" and not self.trust_folder_code:
            raise ValueError("kind meissonic runs the Python code in its folder (src/transformer.py): set "
                             "model.trust_folder_code: true if you trust that folder")
        if self.kind == "meissonic" and self.resolution is None:
            raise ValueError("kind meissonic needs resolution: pixels per side")
        return self


class SamplerConfig(Section):
    """The hand schedule and sampler; every knob can later be overridden per step by a schedule policy."""

    # masked_image: maskgit or emerge; flow_image: flow; masked_text: low_confidence or random (LLaDA's re-masking).
    # In a config file, the model family's first by default.
    kind: Literal["maskgit", "emerge", "flow", "low_confidence", "random"] = "maskgit"
    steps: Steps = 8
    guidance: float = Field(1.0, ge=0.0)
    temperature: float = Field(1.0, gt=0.0)  # masked
    remask_temperature: float = Field(4.5, ge=0.0)  # masked
    noise_level: float = Field(0.7, ge=0.0)  # flow: the SDE steps' a in sigma_t = a sqrt(t / (1 - t))
    time_shift: float = Field(1.0, gt=0.0)  # flow: SD3's shift of the time grid toward the noisy end
    # flow: a rollout group's samples start from the same noise, so their rewards differ by the SDE steps alone
    # (DanceGRPO's and MixGRPO's choice); evaluations draw each sample's own
    shared_noise: bool = False
    batch_size: int = Field(64, ge=1)
    # masked_text: completion positions, decoded in blocks of block_length left to right, the steps split evenly
    # between the blocks (LLaDA's gen_length and block_length; 24 and 8 by default)
    length: int | None = Field(None, ge=1, le=4096)
    block_length: int | None = Field(None, ge=1, le=4096)


class VlmJudgeConfig(Section):
    """A vision-language model behind an OpenAI-compatible chat completions API, asked for a score per image."""

    base_url: str  # up to and including the API version, e.g. http://127.0.0.1:8000/v1
    model: str
    # {prompt} is replaced by the image's prompt; the reply's last non-empty line must be the score alone.
    template: str = ("Rate from 0 to 10 how well this image matches the description: \"{prompt}\". "
                     "Reply with the score alone on the last line.")
    score_pattern: str = r"(\d+(?:\.\d+)?)"  # must match that whole line; group 1 is the score
    min_score: float = 0.0
    max_score: float = 10.0
    timeout_s: float = Field(60.0, gt=0)  # per request
    retries: int = Field(2, ge=0)  # after a timeout, a dropped connection, HTTP 408, 429, 500, 502-504
    backoff_s: float = Field(1.0, ge=0)  # waits backoff_s * 2^k before retry k + 1
    max_tokens: int = Field(32, ge=1)
    concurrency: int = Field(8, ge=1)  # requests in flight per reward worker
    api_key_env: str | None = None  # the environment variable holding the API key, if the server wants one

    @model_validator(mode="after")
    def _sane(self) -> VlmJudgeConfig:
        if "{prompt}" not in self.template:
            raise ValueError("template must contain {prompt}")
        try:
            groups = re.compile(self.score_pattern).groups
        except re.error as exc:
            raise ValueError(f"score_pattern is not a regular expression ({exc})") from None
        if groups < 1:
            raise ValueError("score_pattern needs a group around the score")
        if self.min_score >= self.max_score:
            raise ValueError("min_score must be below max_score")
        return self


_HEADS = {"shapes": ("strict", "partial"), "reasoning": ("correct", "format")}  # a kind's heads, its default first


class RewardConfig(Section):
    """One reward term; several are normalised within the group one by one, weighted, then summed."""

    kind: Literal["shapes", "clip", "hps", "image_reward", "vlm_judge", "reasoning", "plugin"] = "shapes"
    # shapes: which of the detector's scores is this term: GenEval's strict correctness or partial credit.
    # reasoning: the verified answer (correct) or the completion's format (format). Default: strict, correct.
    head: Literal["strict", "partial", "correct", "format"] | None = None
    weight: float = Field(1.0, gt=0)
    # clip: a local transformers CLIP folder (model + processor); hps: the HPSv2 / HPSv2.1 checkpoint file;
    # image_reward: a folder with ImageReward.pt, med_config.json and tokenizer/ (bert-base-uncased's files).
    # Checked when the reward is built, on the machine that scores.
    path: str | None = None
    arch: str = "ViT-H-14"  # hps: the open_clip architecture the checkpoint belongs to
    judge: VlmJudgeConfig | None = None  # vlm_judge only
    # plugin: a reward of one's own, "package.module:Class" (importing it runs it), built as Class(this section)
    target: str | None = None
    options: dict[str, Any] = {}  # plugin: its settings, as its class reads them

    @model_validator(mode="before")
    @classmethod
    def _head_defaults_to_the_kinds_first(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("head") is None and data.get("kind", "shapes") in _HEADS:
            return {**data, "head": _HEADS[data.get("kind", "shapes")][0]}
        return data

    @model_validator(mode="after")
    def _fields_match_kind(self) -> RewardConfig:
        heads = _HEADS.get(self.kind)
        if heads is None and self.head is not None:
            raise ValueError(f"head is for kinds shapes and reasoning, not {self.kind}")
        if heads is not None and self.head not in heads:
            raise ValueError(f"kind {self.kind} has heads {' and '.join(heads)}, not {self.head}")
        plugin = self.kind == "plugin"
        if plugin and not is_plugin_ref(self.target):
            raise ValueError("kind plugin needs target: package.module:Class")
        if not plugin and (self.target is not None or self.options):
            raise ValueError(f"target and options are for kind plugin, not {self.kind}")
        needs_path = self.kind in ("clip", "hps", "image_reward")
        if needs_path and not self.path:
            raise ValueError(f"kind {self.kind} needs path: its local model")
        if not needs_path and self.path is not None:
            raise ValueError(f"path is not used by kind {self.kind}")
        if (self.kind == "vlm_judge") != (self.judge is not None):
            raise ValueError("kind vlm_judge needs a judge section, and only it takes one")
        return self

    @property
    def name(self) -> str:
        """Unique per term: two CLIP-family terms (say CLIPScore and PickScore) differ by their model."""
        if self.kind in ("shapes", "reasoning"):
            return f"{self.kind}_{self.head}"
        if self.kind == "vlm_judge":
            return f"{self.kind}_{re.sub(r'[^A-Za-z0-9._-]+', '_', self.judge.model)}"
        if self.kind == "plugin":
            return f"{self.kind}_{self.target.split(':')[1]}"
        return f"{self.kind}_{Path(self.path).stem}"


class SchedulePolicyConfig(Section):
    """pi_phi: a diagonal Gaussian over unconstrained actions, squashed around the family's hand schedule."""

    learn: tuple[str, ...] | None = None  # the knobs phi learns; null: every knob the model family exposes
    # What phi reads besides the step position: the prompt's features from theta's own embedding as it trains
    # (live) or from the model as training started (frozen); and the canvas before each step, pooled from the
    # frozen model's token embedding (pooled), or only the fraction still masked (none).
    prompt_input: Literal["live", "frozen"] = "live"
    canvas_input: Literal["none", "pooled"] = "none"
    hidden: int = Field(64, gt=0, le=65536)
    time_features: int = Field(16, ge=2, le=1024, multiple_of=2)  # sine and cosine pairs of the step position
    std_mode: Literal["learned", "decayed"] = "learned"
    std_init: float = Field(0.3, gt=0)
    std_decay: float = Field(0.98, gt=0, le=1)  # per iteration, when decayed
    std_min: float = Field(0.05, gt=0)
    lr: float = Field(3e-3, gt=0)
    epochs: int = Field(4, ge=1)  # inner epochs per phi update (cheap: no model forward)

    @model_validator(mode="after")
    def _knobs_unique(self) -> SchedulePolicyConfig:
        if self.learn is not None and (len(set(self.learn)) != len(self.learn) or not self.learn):
            raise ValueError("learn must name each knob at most once, and at least one")
        return self
