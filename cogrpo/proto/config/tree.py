"""The config tree's root, and how a config is loaded: `load_config` reads YAML, applies `--set a.b=value`
overrides, validates, and turns every problem into one `InputError` line. The resolved config
(`Config.model_dump()`) is saved with each run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from cogrpo.proto.config.algo import AlgoConfig
from cogrpo.proto.config.base import Section, Seed
from cogrpo.proto.config.model import ModelConfig, RewardConfig, SamplerConfig, SchedulePolicyConfig
from cogrpo.proto.config.run import (ClusterConfig, EvalConfig, MetricsConfig, PretrainConfig, SimulateConfig,
                                     TrainConfig)
from cogrpo.proto.errors import InputError, clip
from cogrpo.proto.kinds import FAMILIES, FAMILY_OF_KIND, OPEN_PROMPT_KINDS, REWARD_SCORES
from cogrpo.proto.plugins import plugin_attribute


# What a masked text family's config means when it does not say: the reasoning world's prompts and its verifier.
TEXT_DEFAULTS = {"sampler": {"length": 24, "block_length": 8, "steps": 12},
                 "train": {"prompts": "builtin:reasoning_train",
                           "eval_metadata": {"heldout": "builtin:reasoning_heldout"}, "eval_steps": [12]},
                 "eval": {"metadata": "builtin:reasoning_heldout", "steps": 12}}


class Config(Section):
    seed: Seed = 0
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
    # a simulated cluster: the configured model and rewards stand in as waits and drawn scores (docs/simulation.md)
    simulate: SimulateConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults_follow_the_family(cls, data: Any) -> Any:
        """sampler.kind defaults to the built-in family's first sampler (a family of one's own: maskgit, unused); a
        text family's sampler decodes 24 positions in blocks of 8 and its prompts are the reasoning world's."""
        if not isinstance(data, dict) or not isinstance(data.get("sampler", {}), dict):
            return data
        model = data.get("model") or {}
        kind = model.get("kind", "tiny_mdm") if isinstance(model, dict) else None
        name = (model.get("family") if isinstance(model, dict) and model.get("family") else
                FAMILY_OF_KIND.get(kind) if isinstance(kind, str) else None)
        family = FAMILIES.get(name)
        default = family.samplers[0] if family is not None else "maskgit"
        data = {**data, "sampler": {"kind": default, **data.get("sampler", {})}}
        if name == "masked_text":
            data.setdefault("rewards", [{"kind": "reasoning", "head": "correct"}])
            for section, defaults in TEXT_DEFAULTS.items():
                if isinstance(data.get(section, {}), dict):
                    data[section] = {**defaults, **data.get(section, {})}
        return data

    @property
    def samples(self) -> str:
        """What the model family makes: "images" or "texts"."""
        family = self.model.family
        return FAMILIES[family].samples if family in FAMILIES else plugin_attribute(family, "samples")

    @property
    def prompt_world(self) -> str:
        """What its prompt files hold: "reasoning" tasks (a text family), "open" prompts (any text, GenEval metadata
        of any class: a backbone with its own text encoder) or the "shapes" world's (its vocabulary and classes)."""
        if self.samples == "texts":
            return "reasoning"
        return "open" if self.model.kind in OPEN_PROMPT_KINDS else "shapes"

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if not self.rewards:
            raise ValueError("rewards: at least one reward is needed")
        names = [reward.name for reward in self.rewards]
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice is not None:
            raise ValueError(f"rewards: two terms are both named {twice!r} (the same kind and model, or head): "
                             "merge them into one with the summed weight")
        self._rewards_score_the_familys_samples()
        family = FAMILIES.get(self.model.family)
        if family is not None:
            self._family_offers(family)
        learn = self.schedule_policy.learn
        knobs = [knob.name for knob in family.knobs] if family is not None else []
        if family is not None and learn is not None:
            unknown = [knob for knob in learn if knob not in knobs]
            if unknown:
                raise ValueError(f"schedule_policy.learn: family {self.model.family} has no knob {unknown[0]!r} "
                                 f"(its knobs: {', '.join(knobs)})")
        learns_guidance = "guidance" in knobs and "guidance" in (learn or ("guidance",))
        if learns_guidance and self.algo.mode != "grpo" and self.sampler.guidance <= 0:
            raise ValueError("learning guidance needs sampler.guidance > 0 (the policy scales around it)")
        if self.sampler.shared_noise:
            self._noise_shared_by_whole_groups()
        self._blocks_divide()
        if self.simulate is not None and self.algo.theta_objective != "clipped":
            raise ValueError("simulate: a simulated run replays log-probs (algo.theta_objective clipped)")
        if self.algo.steps.mode == "window" and self.algo.steps.window > self.sampler.steps:
            raise ValueError(f"algo.steps.window {self.algo.steps.window} exceeds sampler.steps {self.sampler.steps}")
        if self.runtime == "ray" and self.algo.minibatch < self.cluster.learner_ranks:
            raise ValueError(f"algo.minibatch {self.algo.minibatch} is below cluster.learner_ranks "
                             f"{self.cluster.learner_ranks}: every rank trains a share of each minibatch")
        if self.runtime == "ray" and self.cluster.learner_ranks > 1 and self.algo.replay_chunk:
            raise ValueError("algo.replay_chunk with several learner ranks is not supported yet: ranks whose shares "
                             "differ would run different numbers of blocks, and DeepSpeed's collectives need them "
                             "equal (use activation_checkpointing and a smaller minibatch)")
        return self

    def _family_offers(self, family) -> None:
        """The sampler, theta's likelihood estimator and objective must be the family's; a flow SDE step needs
        noise."""
        if self.sampler.kind not in family.samplers:
            raise ValueError(f"sampler.kind {self.sampler.kind} is not a sampler of family {self.model.family} "
                             f"({', '.join(family.samplers)})")
        for field, value, offered in (("theta_likelihood", self.algo.theta_likelihood, family.estimators),
                                      ("theta_objective", self.algo.theta_objective, family.objectives)):
            if value not in offered:
                raise ValueError(f"algo.{field} {value} is not offered by family {self.model.family} "
                                 f"({', '.join(offered)})")
        if self.sampler.kind == "flow" and self.sampler.noise_level <= 0:
            raise ValueError("sampler.noise_level 0 makes the SDE steps deterministic: their log-prob, which "
                             "theta trains on, is undefined (ODE steps are the step plan's, algo.steps)")

    def _blocks_divide(self) -> None:
        """A text sampler's blocks split its positions, and every step count it decodes with, evenly."""
        sampler = self.sampler
        if self.model.family != "masked_text":
            if sampler.length is not None or sampler.block_length is not None:
                raise ValueError("sampler.length and sampler.block_length are for the masked_text family")
            return
        if sampler.length is None or sampler.block_length is None:
            raise ValueError("the masked_text family needs sampler.length and sampler.block_length")
        if sampler.length % sampler.block_length:
            raise ValueError(f"sampler.block_length {sampler.block_length} does not divide sampler.length "
                             f"{sampler.length}")
        blocks = sampler.length // sampler.block_length
        for where, steps in (("sampler.steps", sampler.steps), ("eval.steps", self.eval.steps),
                             *(("train.eval_steps", s) for s in self.train.eval_steps)):
            if steps % blocks:
                raise ValueError(f"{where} {steps} cannot be split evenly between the sampler's {blocks} blocks")

    def _noise_shared_by_whole_groups(self) -> None:
        """Shared starting noise is drawn per group inside a batch, so batches must hold whole groups."""
        if self.sampler.kind != "flow":
            raise ValueError(f"sampler.shared_noise: the {self.sampler.kind} sampler starts from no noise "
                             "(a flow sampler does)")
        group = self.algo.samples_per_prompt
        if self.sampler.batch_size % group:
            raise ValueError(f"sampler.shared_noise needs sampler.batch_size ({self.sampler.batch_size}) to be a "
                             f"multiple of the samples per prompt ({group}): a batch holds whole groups")

    def _rewards_score_the_familys_samples(self) -> None:
        """A family makes images or texts; every reward must score that kind (plugins declare theirs)."""
        family, samples = self.model.family, self.samples
        for index, reward in enumerate(self.rewards):
            scores = REWARD_SCORES.get(reward.kind) or plugin_attribute(reward.target, "scores")
            if scores != samples:
                raise ValueError(f"rewards.{index} ({reward.name}) scores {scores}, but family {family} makes "
                                 f"{samples}")


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = clip(".".join(str(p) for p in first["loc"])) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{where}'"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    # a validator's own message, without pydantic's "Value error, " prefix
    message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
    return f"config {where}: {message}{more}"


MAX_VALUES = 100_000  # a config tree, its aliases expanded, has at most this many values


class _Refused(yaml.YAMLError):
    """Valid YAML this project does not read: a key twice in a mapping, or aliases that expand too far."""


class _StrictLoader(yaml.SafeLoader):
    """YAML as the safe loader reads it, but a mapping may not name a key twice (the last would silently win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _Refused(f"line {key_node.start_mark.line + 1}: key {clip(str(key))!r} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(text: str) -> Any:
    """Strict YAML (no key twice in a mapping) whose aliases do not expand past MAX_VALUES values: an alias bomb
    is refused here instead of expanding when the config is copied or saved."""
    value = yaml.load(text, Loader=_StrictLoader)
    pending, count = [value], 0
    while pending:
        item = pending.pop()
        count += 1
        if count > MAX_VALUES:
            raise _Refused(f"more than {MAX_VALUES} values once its aliases are expanded")
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return value


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--set expects key=value, got {clip(assignment)!r}")
    try:
        value = read_yaml(raw)
    except (yaml.YAMLError, RecursionError):
        raise InputError(f"--set {clip(key)}: cannot parse value {clip(raw)!r}") from None
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = _item(node, part, key) if isinstance(node, list) else node.setdefault(part, {})
        if not isinstance(child, (dict, list)):
            raise InputError(f"--set {clip(key)}: '{clip(part)}' is not a section")
        node = child
    if isinstance(node, list):
        _item(node, parts[-1], key)
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def _item(items: list, part: str, key: str) -> Any:
    """A list entry named by its index in an override (rewards.0.weight=2)."""
    if not part.isdigit() or int(part) >= len(items):
        raise InputError(f"--set {clip(key)}: '{clip(part)}' is not an index of a list of {len(items)}")
    return items[int(part)]


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
            tree = read_yaml(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise InputError(f"config file is not UTF-8 text: {path}") from None
        except _Refused as exc:
            raise InputError(f"config file {path}: {exc}") from None
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
