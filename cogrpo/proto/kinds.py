"""The catalogue a config is checked against before anything is built: each built-in model family's samples,
schedule knobs and backbones, and what each built-in reward scores. A family or reward of one's own declares the
same on its class (`samples`, `knobs`; `scores`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Knob:
    """A schedule knob: `unit` knobs live in (0, 1) (sigmoid around the hand value), `positive` ones above 0
    (softplus around it)."""

    name: str
    bounds: Literal["unit", "positive"]


MASKED_IMAGE_KNOBS = (Knob("remask_ratio", "unit"), Knob("temperature", "positive"),
                      Knob("remask_temperature", "positive"), Knob("guidance", "positive"))
MASKED_TEXT_KNOBS = MASKED_IMAGE_KNOBS[:3]  # the same knobs, without guidance
# step_fraction: the share of the time left (the noise level) a step removes; noise_level: the SDE's a
FLOW_IMAGE_KNOBS = (Knob("step_fraction", "unit"), Knob("noise_level", "positive"), Knob("guidance", "positive"))


@dataclass(frozen=True)
class FamilyInfo:
    samples: str  # what `decode` gives the rewards: "images" or "texts"
    knobs: tuple[Knob, ...]
    kinds: tuple[str, ...]  # the model.kind values of its built-in backbones
    samplers: tuple[str, ...]  # the sampler.kind values it decodes with, its default first
    estimators: tuple[str, ...]  # the algo.theta_likelihood values it offers
    objectives: tuple[str, ...] = ("clipped",)  # the algo.theta_objective values it offers


FAMILIES: dict[str, FamilyInfo] = {
    "masked_image": FamilyInfo("images", MASKED_IMAGE_KNOBS, ("tiny_mdm", "amused", "meissonic"),
                               ("maskgit", "emerge"), ("trajectory", "maskgrpo")),
    "flow_image": FamilyInfo("images", FLOW_IMAGE_KNOBS, ("tiny_flow", "sd3", "flux"), ("flow",), ("trajectory",),
                             ("clipped", "nft")),
    "masked_text": FamilyInfo("texts", MASKED_TEXT_KNOBS, ("tiny_mdlm", "llada"), ("low_confidence", "random"),
                              ("trajectory", "maskgrpo", "d1", "unigrpo")),
}
FAMILY_OF_KIND = {kind: name for name, info in FAMILIES.items() for kind in info.kinds}
# Image backbones with a text encoder of their own: they read any prompt, so their prompt files may hold free text
# and GenEval metadata of any class. The other image models read the shapes world's closed vocabulary, and their
# prompts must be ones its judge can score.
OPEN_PROMPT_KINDS = ("amused", "meissonic", "sd3", "flux")

# What each built-in reward scores (each reward class declares the same as `scores`; a test holds them together).
REWARD_SCORES = {"shapes": "images", "clip": "images", "hps": "images", "image_reward": "images",
                 "vlm_judge": "images", "reasoning": "texts"}
