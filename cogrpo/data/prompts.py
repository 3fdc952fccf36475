"""GenEval-style prompts for the shapes world: the six task templates, their metadata records, the closed word
vocabulary, and the split between RL-training compositions and held-out ones.

A record is GenEval's metadata form: {"tag", "include": [{"class", "count", "color"?, "position"?}],
"exclude"?, "prompt"}. An entry with `"position": [relation, j]` must stand `relation` of include[j].
"""

from __future__ import annotations

import random
import unicodedata
from typing import Iterable

from cogrpo.data.world import CLASSES, COLORS, RELATIONS
from cogrpo.proto.errors import InputError, clip

TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBER_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}
PLURALS = {cls: cls + "s" for cls in CLASSES}
MAX_COUNT = 4

PAD, NULL = "<pad>", "<null>"
VOCAB: tuple[str, ...] = (
    (PAD, NULL, "a", "photo", "of", "and", "left", "right", "above", "below", "two", "three", "four")
    + COLORS + CLASSES + tuple(PLURALS.values())
)
WORD_ID = {w: i for i, w in enumerate(VOCAB)}
MAX_WORDS = 12
MAX_PROMPT_CHARS = 2000  # an open prompt: far past what CLIP (77 tokens) or T5 (512) read


def tokenize(prompt: str) -> list[int]:
    """Word ids padded to MAX_WORDS; an unknown word is an error, never a silent UNK."""
    words = prompt.split()
    unknown = [w for w in words if w not in WORD_ID or w in (PAD, NULL)]
    if unknown:
        raise InputError(f"unknown word {clip(repr(unknown[0]))} in prompt {clip(repr(prompt))} "
                         f"(vocabulary: {' '.join(VOCAB[2:])})")
    if not words:
        raise InputError("empty prompt")
    if len(words) > MAX_WORDS:
        raise InputError(f"prompt has {len(words)} words, at most {MAX_WORDS}: {clip(repr(prompt))}")
    ids = [WORD_ID[w] for w in words]
    return ids + [WORD_ID[PAD]] * (MAX_WORDS - len(ids))


def check_prompt(prompt: str, world: str) -> str:
    """A prompt as its world takes it: the shapes world's in its vocabulary (`tokenize`); an open one (a model with
    its own text encoder) any text that is not blank, not too long, and holds no control or unpaired surrogate
    character (binary junk, not a prompt)."""
    if world == "shapes":
        tokenize(prompt)
        return prompt
    if not prompt.strip():
        raise InputError("empty prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"a prompt is at most {MAX_PROMPT_CHARS:,} characters, this one {len(prompt):,}: "
                         f"{clip(repr(prompt))}")
    bad = next((c for c in prompt if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise InputError(f"prompt holds {bad!r}, a control character or unpaired surrogate: {clip(repr(prompt))}")
    return prompt


def null_tokens() -> list[int]:
    """The unconditional prompt used for classifier-free guidance."""
    return [WORD_ID[NULL]] + [WORD_ID[PAD]] * (MAX_WORDS - 1)


def _entry(cls: str, count: int = 1, color: str | None = None, position: list | None = None) -> dict:
    entry: dict = {"class": cls, "count": count}
    if color is not None:
        entry["color"] = color
    if position is not None:
        entry["position"] = position
    return entry


def _noun(cls: str, color: str | None) -> str:
    return f"a {color} {cls}" if color else f"a {cls}"


def single_object(cls: str) -> dict:
    return {"tag": "single_object", "include": [_entry(cls)], "prompt": f"a photo of {_noun(cls, None)}"}


def colors(color: str, cls: str) -> dict:
    return {"tag": "colors", "include": [_entry(cls, color=color)], "prompt": f"a photo of {_noun(cls, color)}"}


def counting(count: int, cls: str) -> dict:
    return {"tag": "counting", "include": [_entry(cls, count)], "exclude": [_entry(cls, count + 1)],
            "prompt": f"a photo of {NUMBER_WORDS[count]} {PLURALS[cls]}"}


def two_object(cls_a: str, cls_b: str, color_a: str | None = None, color_b: str | None = None) -> dict:
    tag = "color_attr" if color_a else "two_object"
    return {"tag": tag, "include": [_entry(cls_a, color=color_a), _entry(cls_b, color=color_b)],
            "prompt": f"a photo of {_noun(cls_a, color_a)} and {_noun(cls_b, color_b)}"}


def position(cls_a: str, relation: str, cls_b: str, color_a: str | None = None, color_b: str | None = None) -> dict:
    """`a {A} {relation} a {B}`: as in GenEval, the reference B is include[0] and A carries the position."""
    return {"tag": "position",
            "include": [_entry(cls_b, color=color_b), _entry(cls_a, color=color_a, position=[relation, 0])],
            "prompt": f"a photo of {_noun(cls_a, color_a)} {relation} {_noun(cls_b, color_b)}"}


def parse_prompt(prompt: str) -> dict:
    """Turn a prompt written in one of the six templates back into its metadata record."""
    tokenize(prompt)  # vocabulary and length errors first
    words = prompt.split()
    if words[:3] != ["a", "photo", "of"]:
        raise InputError(f"prompt must start with 'a photo of': {clip(repr(prompt))}")
    rest = words[3:]

    def noun(ws: list[str]) -> tuple[str, str | None] | None:
        if len(ws) == 2 and ws[0] == "a" and ws[1] in CLASSES:
            return ws[1], None
        if len(ws) == 3 and ws[0] == "a" and ws[1] in COLORS and ws[2] in CLASSES:
            return ws[2], ws[1]
        return None

    if (single := noun(rest)) is not None:
        cls, color = single
        return colors(color, cls) if color else single_object(cls)
    if len(rest) == 2 and rest[1] in PLURALS.values():
        count = {w: n for n, w in NUMBER_WORDS.items()}.get(rest[0])
        if count and count > 1:
            return counting(count, rest[1][:-1])
    if "and" in rest:
        i = rest.index("and")
        a, b = noun(rest[:i]), noun(rest[i + 1:])
        if a and b and (a[1] is None) == (b[1] is None) and a[0] != b[0]:
            return two_object(a[0], b[0], a[1], b[1])
    for relation in RELATIONS:
        rel = relation.split()
        for i in range(1, len(rest)):
            if rest[i: i + len(rel)] == rel:
                a, b = noun(rest[:i]), noun(rest[i + len(rel):])
                if a and b and (a[1] is None) == (b[1] is None):
                    return position(a[0], relation, b[0], a[1], b[1])
    raise InputError(f"prompt does not follow a GenEval template: {clip(repr(prompt))}")


# ---- held-out compositions: never seen in RL training prompts, used to measure generalisation ----
HELDOUT_COLOR_CLASS = frozenset({("red", "triangle"), ("green", "circle"), ("blue", "square"), ("yellow", "triangle")})
HELDOUT_RELATION = frozenset({("square", "above", "circle"), ("triangle", "left of", "square"),
                              ("circle", "right of", "triangle"), ("circle", "below", "square")})
HELDOUT_COUNT = frozenset({(3, "circle"), (2, "triangle")})


def compositions(record: dict) -> set[tuple]:
    """The colour-class pairs, count-class pairs and class-relation-class triples a record asks for."""
    found: set[tuple] = set()
    includes = record["include"]
    for entry in includes:
        if "color" in entry:
            found.add((entry["color"], entry["class"]))
        if "position" in entry:
            relation, j = entry["position"]
            found.add((entry["class"], relation, includes[j]["class"]))
    if record["tag"] == "counting":
        found.add((includes[0]["count"], includes[0]["class"]))
    return found


def is_heldout(record: dict) -> bool:
    return bool(compositions(record) & (HELDOUT_COLOR_CLASS | HELDOUT_RELATION | HELDOUT_COUNT))


def random_record(task: str, rng: random.Random) -> dict:
    c1, c2 = rng.sample(COLORS, 2)
    k1, k2 = rng.sample(CLASSES, 2)
    if task == "single_object":
        return single_object(k1)
    if task == "colors":
        return colors(c1, k1)
    if task == "counting":
        return counting(rng.randint(2, MAX_COUNT), k1)
    if task == "two_object":
        return two_object(k1, k2)
    if task == "color_attr":
        return two_object(k1, k2, c1, c2)
    if task == "position":
        return position(k1, rng.choice(RELATIONS), rng.choice(CLASSES), c1, c2)
    raise ValueError(task)


def sample_records(rng: random.Random, n: int, split: str = "all", tasks: Iterable[str] = TASKS) -> list[dict]:
    """n records, tasks in turn. split: "all", "train" (no held-out composition) or "heldout" (tasks that have
    compositions carry at least one held-out one; single_object and two_object have none and are drawn freely)."""
    if split not in ("all", "train", "heldout"):
        raise ValueError(split)
    tasks = list(tasks)
    out = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        while True:
            record = random_record(task, rng)
            if split == "all" or (split == "train" and not is_heldout(record)):
                break
            if split == "heldout" and (is_heldout(record) or not compositions(record)):
                break
        out.append(record)
    return out


# The shipped metadata files (cogrpo/data/metadata/NAME.jsonl): (split, number of records, seed).
BUILTIN_METADATA = {"heldout": ("heldout", 400, 1001), "train": ("train", 400, 1002)}


def builtin_metadata(name: str) -> list[dict]:
    split, n, seed = BUILTIN_METADATA[name]
    return sample_records(random.Random(seed), n, split)


def training_records(seed: int, iteration: int, n: int, pool: list[dict] | None = None) -> list[dict]:
    """The RL prompts of one iteration, a pure function of (seed, iteration): drawn from the train split, or
    from `pool` (records of a metadata file) when given. Resuming needs no sampler state beyond the iteration."""
    rng = random.Random(f"{seed}:{iteration}")
    if pool is None:
        return sample_records(rng, n, split="train", tasks=rng.sample(TASKS, len(TASKS)))
    return [pool[i] for i in rng.sample(range(len(pool)), n)] if n <= len(pool) else rng.choices(pool, k=n)
