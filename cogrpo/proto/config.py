"""The config tree: one frozen, validated pydantic model per section.

`load_config` reads YAML, applies `--set a.b=value` overrides, validates, and turns every problem into one
`InputError` line. The resolved config (`Config.model_dump()`) is saved with each run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cogrpo.proto.errors import InputError


class Section(BaseModel):
    """Base of every config section: frozen; unknown keys and non-finite numbers (`.inf`, `.nan`) are errors, not
    silently accepted (an infinite learning rate or timeout validates against every bound but `lt`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class TinyMDMArch(Section):
    d_model: int = Field(128, gt=0)
    layers: int = Field(4, gt=0)
    heads: int = Field(4, gt=0)
    ff_mult: int = Field(4, gt=0)
    conv_layers: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyMDMArch:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        return self


FOLDER_MODELS = ("amused", "meissonic")  # backbones loaded from a local folder of pretrained components


class ModelConfig(Section):
    kind: Literal["tiny_mdm", "amused", "meissonic"] = "tiny_mdm"
    # tiny_mdm: a safetensors file, "builtin:tiny_mdm" for the shipped checkpoint, or null for a fresh random model.
    # amused, meissonic: null for the folder's own weights, or fine-tuned ones (a safetensors file or a run directory).
    checkpoint: str | None = "builtin:tiny_mdm"
    arch: TinyMDMArch = TinyMDMArch()  # tiny_mdm only
    # amused: a local folder in the diffusers AmusedPipeline layout; meissonic: a local Meissonic snapshot with its
    # src/transformer.py. Contents are checked when the model is built, on the machine that builds it (a driver
    # need not hold the weights its GPU workers load).
    path: str | None = None
    # meissonic: its transformer class is Python code inside the folder, and loading it runs that code; so it is
    # refused unless this is true.
    trust_folder_code: bool = False
    resolution: int | None = Field(None, gt=0)  # meissonic: pixels per side (its transformer has no fixed size)

    @model_validator(mode="before")
    @classmethod
    def _folder_models_start_from_their_folder(cls, data: Any) -> Any:
        """The shipped TinyMDM default means nothing for a folder model: its default checkpoint is none, and
        Meissonic's resolution is the released 1024."""
        if isinstance(data, dict) and data.get("kind") in FOLDER_MODELS:
            data = {"checkpoint": None, **data}
            if data["kind"] == "meissonic":
                data = {"resolution": 1024, **data}
        return data

    @model_validator(mode="after")
    def _fields_match_kind(self) -> ModelConfig:
        folder = self.kind in FOLDER_MODELS
        if folder and not self.path:
            raise ValueError(f"kind {self.kind} needs path: the local {self.kind} folder")
        if not folder and self.path is not None:
            raise ValueError(f"path is only for kinds {', '.join(FOLDER_MODELS)}, not {self.kind}")
        if folder and (self.checkpoint or "").startswith("builtin:"):
            raise ValueError(f"checkpoint {self.checkpoint} is a TinyMDM checkpoint, not {self.kind} weights")
        if self.kind != "meissonic" and (self.trust_folder_code or self.resolution is not None):
            raise ValueError("trust_folder_code and resolution are only for kind meissonic")
        if self.kind == "meissonic" and not self.trust_folder_code:
            raise ValueError("kind meissonic runs the Python code in its folder (src/transformer.py): set "
                             "model.trust_folder_code: true if you trust that folder")
        if self.kind == "meissonic" and self.resolution is None:
            raise ValueError("kind meissonic needs resolution: pixels per side")
        return self


class SamplerConfig(Section):
    """The hand schedule and sampler; every knob can later be overridden per step by a schedule policy."""

    kind: Literal["maskgit", "emerge"] = "maskgit"
    steps: int = Field(8, ge=1, le=256)
    guidance: float = Field(1.0, ge=0.0)
    temperature: float = Field(1.0, gt=0.0)
    remask_temperature: float = Field(4.5, ge=0.0)
    batch_size: int = Field(64, ge=1)


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


class RewardConfig(Section):
    """One reward term; several are normalised within the group one by one, weighted, then summed."""

    kind: Literal["shapes", "clip", "hps", "image_reward", "vlm_judge"] = "shapes"
    # shapes: which of the detector's scores is this term: GenEval's strict correctness or partial credit.
    head: Literal["strict", "partial"] = "strict"
    weight: float = Field(1.0, gt=0)
    # clip: a local transformers CLIP folder (model + processor); hps: the HPSv2 / HPSv2.1 checkpoint file;
    # image_reward: a folder with ImageReward.pt, med_config.json and tokenizer/ (bert-base-uncased's files).
    # Checked when the reward is built, on the machine that scores.
    path: str | None = None
    arch: str = "ViT-H-14"  # hps: the open_clip architecture the checkpoint belongs to
    judge: VlmJudgeConfig | None = None  # vlm_judge only

    @model_validator(mode="after")
    def _fields_match_kind(self) -> RewardConfig:
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
        if self.kind == "shapes":
            return f"{self.kind}_{self.head}"
        if self.kind == "vlm_judge":
            return f"{self.kind}_{re.sub(r'[^A-Za-z0-9._-]+', '_', self.judge.model)}"
        return f"{self.kind}_{Path(self.path).stem}"


KnobName = Literal["remask_ratio", "temperature", "remask_temperature", "guidance"]


class SchedulePolicyConfig(Section):
    """pi_phi: a diagonal Gaussian over unconstrained actions, squashed around the hand schedule."""

    learn: tuple[KnobName, ...] = ("remask_ratio", "temperature", "remask_temperature", "guidance")
    hidden: int = Field(64, gt=0)
    time_features: int = Field(16, ge=2)
    std_mode: Literal["learned", "decayed"] = "learned"
    std_init: float = Field(0.3, gt=0)
    std_decay: float = Field(0.98, gt=0, le=1)  # per iteration, when decayed
    std_min: float = Field(0.05, gt=0)
    lr: float = Field(3e-3, gt=0)
    epochs: int = Field(4, ge=1)  # inner epochs per phi update (cheap: no model forward)

    @model_validator(mode="after")
    def _knobs_unique(self) -> SchedulePolicyConfig:
        if len(set(self.learn)) != len(self.learn) or not self.learn:
            raise ValueError("learn must name each knob at most once, and at least one")
        return self


class StepSubsetConfig(Section):
    """Which decoding steps are trained: all; a random fraction each iteration (DanceGRPO); or a MixGRPO
    sliding window of `window` steps, moved by `stride` every `shift_every` iterations, with greedy decoding
    outside it and, with `flash_ratio`, fewer steps after it."""

    mode: Literal["all", "random", "window"] = "all"
    fraction: float = Field(0.5, gt=0, le=1)
    window: int = Field(4, ge=1)
    shift_every: int = Field(25, ge=1)
    stride: int = Field(1, ge=0)
    flash_ratio: float | None = Field(None, gt=0, le=1)


class AlgoConfig(Section):
    mode: Literal["cogrpo", "grpo", "schedule_only"] = "cogrpo"
    # cogrpo: alternate `alternate_every` iterations on theta (phi frozen) and `alternate_every_phi` (default: the
    # same) on phi (theta frozen), or joint. A phi iteration costs a rollout alone, a theta one a rollout and a
    # replay with gradients, so longer phi blocks buy schedule updates cheaply.
    update: Literal["alternating", "joint"] = "alternating"
    alternate_every: int = Field(5, ge=1)
    alternate_every_phi: int | None = Field(None, ge=1)
    # How the rollouts of an iteration that trains theta alone act the frozen schedule policy: with sampled actions
    # (exploration noise, as in phi's iterations) or with its mean action, the schedule evaluation decodes with.
    frozen_schedule: Literal["sampled", "mean"] = "sampled"
    first: Literal["theta", "phi"] = "theta"
    group_size: int = Field(8, ge=2)
    # PODS: roll out this many samples per prompt and train on the group_size of them whose rewards vary most
    # (max-variance down-sampling): rollouts are cheap beside an update. None: roll out group_size.
    rollouts_per_prompt: int | None = Field(None, ge=2)
    prompts_per_iteration: int = Field(8, ge=1)
    # Dynamic sampling: roll out this many prompts per iteration and train on the prompts_per_iteration whose
    # groups' combined rewards vary most (a group whose samples all score alike teaches next to nothing).
    # None: roll out prompts_per_iteration, all trained.
    candidate_prompts: int | None = Field(None, ge=1)
    inner_epochs: int = Field(1, ge=1)
    minibatch: int = Field(64, ge=1)
    clip_eps: float = Field(0.2, gt=0)
    clip_eps_phi: float = Field(0.2, gt=0)
    ratio: Literal["token_mean", "step_product"] = "token_mean"
    # token_mean's average: each trained step's tokens averaged, then the steps ("step"), or every committed
    # token of the sample weighted alike ("token", the plain policy gradient's weighting)
    token_average: Literal["step", "token"] = "step"
    kl_beta: float = Field(0.0, ge=0)
    adv_eps: float = Field(1e-4, gt=0)
    adv_clip: float | None = Field(None, gt=0)
    is_cap: float = Field(2.0, ge=1)  # truncation of the behaviour -> old importance weight
    lr: float = Field(5e-5, gt=0)
    # theta's learning rate over the run: constant, or a cosine from lr down to min_lr_ratio * lr at the last
    # iteration, so the model the run ends with has settled instead of still taking full-size steps.
    lr_decay: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    # > 0: the run evaluates and exports an exponential moving average of theta with this decay per theta
    # iteration (cogrpo/learner/averaging.py); rollouts sample the live weights either way
    ema_decay: float = Field(0.0, ge=0, lt=1)
    theta_likelihood: Literal["trajectory", "maskgrpo"] = "trajectory"
    maskgrpo_gamma: float = Field(0.8, ge=0, lt=1)
    steps: StepSubsetConfig = StepSubsetConfig()

    @model_validator(mode="after")
    def _consistent(self) -> AlgoConfig:
        if self.rollouts_per_prompt is not None and self.rollouts_per_prompt < self.group_size:
            raise ValueError(f"rollouts_per_prompt {self.rollouts_per_prompt} is below group_size "
                             f"{self.group_size}: down-sampling keeps group_size of them")
        if self.candidate_prompts is not None and self.candidate_prompts < self.prompts_per_iteration:
            raise ValueError(f"candidate_prompts {self.candidate_prompts} is below prompts_per_iteration "
                             f"{self.prompts_per_iteration}: selection keeps prompts_per_iteration of them")
        if self.token_average == "token" and self.ratio != "token_mean":
            raise ValueError("token_average: token needs ratio: token_mean (step_product has one ratio per step)")
        return self

    @property
    def samples_per_prompt(self) -> int:
        """How many samples each prompt is rolled out and scored with."""
        return self.rollouts_per_prompt or self.group_size

    @property
    def rollout_prompts(self) -> int:
        """How many prompts an iteration rolls out and scores."""
        return self.candidate_prompts or self.prompts_per_iteration


class TrainConfig(Section):
    iterations: int = Field(60, ge=1)
    # RL prompts: null = the generated train split (no held-out composition), or a metadata file.
    prompts: str | None = None
    eval_every: int = Field(20, ge=1)
    eval_at_start: bool = True
    eval_metadata: dict[str, str] = {"heldout": "builtin:heldout", "train": "builtin:train"}
    eval_steps: tuple[int, ...] = (8,)
    checkpoint_every: int = Field(20, ge=1)
    run_dir: str | None = None  # default: runs/<timestamp>


class EvalConfig(Section):
    metadata: str = "builtin:heldout"
    n_per_prompt: int = Field(1, ge=1)
    steps: int = Field(8, ge=1, le=256)


class PretrainConfig(Section):
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    p_uncond: float = Field(0.1, ge=0, le=1)
    log_every: int = Field(50, ge=1)
    out: str = "runs/pretrain/tiny_mdm.safetensors"


class ClusterConfig(Section):
    """The Ray runtime: where actors run and how weights travel. Resources are checked before anything starts."""

    # null: the Ray job's cluster (RAY_ADDRESS) if any, else an embedded local one; "auto" or "HOST:PORT": attach.
    address: str | None = None
    # Embedded cluster's node address. 127.0.0.1: Ray's single-machine mode, every server on loopback only (any
    # other address: Ray's servers listen on every interface and advertise this one).
    node_ip: str = "127.0.0.1"
    num_cpus: int = Field(2, ge=1)  # embedded cluster size
    object_store_mb: int = Field(512, ge=75)
    rollout_workers: int = Field(1, ge=1)
    rollout_cpus: float = Field(1.0, ge=0)
    rollout_gpus: float = Field(0.0, ge=0)
    reward_workers: int = Field(1, ge=1)
    reward_cpus: float = Field(0.0, ge=0)
    reward_gpus: float = Field(0.0, ge=0)
    learner_ranks: int = Field(1, ge=1)
    learner_cpus: float = Field(1.0, ge=0)
    learner_gpus: float = Field(0.0, ge=0)
    # extra custom resources per role, e.g. {"rollout_node": 0.01} to pin roles to labelled nodes
    rollout_resources: dict[str, float] = {}
    reward_resources: dict[str, float] = {}
    learner_resources: dict[str, float] = {}
    # Ray runtime_env of the reward workers, e.g. {"pip": [...]} for a reward whose package pins other versions
    # than the trainer's (ImageReward: see the README)
    reward_runtime_env: dict[str, Any] = {}
    zero_stage: int = Field(1, ge=0, le=3)
    # collective: bucketed broadcast over a group of learner rank 0 + rollout workers (gloo/NCCL);
    # object_store: numpy arrays through Ray's object store (the fallback)
    weight_sync: Literal["collective", "object_store"] = "collective"
    max_staleness: int = Field(0, ge=0, le=1)
    timeout_s: float = Field(600.0, gt=0)
    # faults: Ray restarts a dead rollout or reward worker this many times (its lost calls are issued again); a
    # reward call is declared hung after reward_timeout_s (its worker is restarted), and a hung or failed call is
    # retried reward_retries times before its samples are left unscored
    max_restarts: int = Field(3, ge=0)
    reward_timeout_s: float = Field(300.0, gt=0)
    reward_retries: int = Field(1, ge=0)


class MetricsConfig(Section):
    """The driver's Prometheus endpoint (`/metrics`), for runs without Ray's metrics export. It binds the loopback
    address unless `host` says otherwise: metrics name prompts' rewards and the cluster's layout, so exposing them
    to the network is a choice, not a default."""

    port: int | None = Field(None, ge=0, le=65535)  # null: no endpoint; 0: any free port (the log names it)
    host: str = "127.0.0.1"


class Config(Section):
    seed: int = 0
    threads: int = Field(2, ge=1)
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()
    rewards: tuple[RewardConfig, ...] = (RewardConfig(head="strict"), RewardConfig(head="partial", weight=0.5))
    schedule_policy: SchedulePolicyConfig = SchedulePolicyConfig()
    algo: AlgoConfig = AlgoConfig()
    eval: EvalConfig = EvalConfig()
    pretrain: PretrainConfig = PretrainConfig()
    train: TrainConfig = TrainConfig()
    runtime: Literal["local", "ray"] = "local"
    cluster: ClusterConfig = ClusterConfig()
    metrics: MetricsConfig = MetricsConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if not self.rewards:
            raise ValueError("rewards: at least one reward is needed")
        learns_guidance = "guidance" in self.schedule_policy.learn and self.algo.mode != "grpo"
        if learns_guidance and self.sampler.guidance <= 0:
            raise ValueError("learning guidance needs sampler.guidance > 0 (the policy scales around it)")
        if self.algo.steps.mode == "window" and self.algo.steps.window > self.sampler.steps:
            raise ValueError(f"algo.steps.window {self.algo.steps.window} exceeds sampler.steps {self.sampler.steps}")
        return self


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{where}'"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    # a validator's own message, without pydantic's "Value error, " prefix
    message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
    return f"config {where}: {message}{more}"


def _clip(text: str, limit: int = 60) -> str:
    """Long user input quoted in an error message, shortened so the message stays one readable line."""
    return text if len(text) <= limit else text[:limit] + "..."


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--set expects key=value, got {assignment!r}")
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError):
        raise InputError(f"--set {key}: cannot parse value {_clip(raw)!r}") from None
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InputError(f"--set {key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def resolve_config(tree: dict[str, Any], overrides: list[str] = ()) -> Config:
    tree = yaml.safe_load(yaml.safe_dump(tree))  # deep copy through plain data
    for assignment in overrides:
        _apply_override(tree, assignment)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise InputError(_format_validation_error(err)) from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or the defaults when path is None) and apply `a.b=value` overrides."""
    tree: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise InputError(f"config file is not UTF-8 text: {path}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise InputError(f"config file {path}{line}: not valid YAML") from None
        except RecursionError:
            raise InputError(f"config file {path}: nested too deeply") from None
        if not isinstance(tree, dict):
            raise InputError(f"config file {path}: top level must be a mapping")
    return resolve_config(tree, list(overrides))


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(), sort_keys=False)
