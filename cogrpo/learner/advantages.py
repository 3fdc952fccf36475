"""Group-relative advantages: G samples per prompt, each reward normalised within its group, weighted, summed."""

from __future__ import annotations

import numpy as np

from cogrpo.proto.config import AlgoConfig


def group_ids(n_prompts: int, group_size: int) -> np.ndarray:
    """The prompt (group) each sample belongs to, samples in prompt-major order (group_size per prompt in a row)."""
    return np.repeat(np.arange(n_prompts), group_size)


def group_normalize(scores: np.ndarray, groups: np.ndarray, valid: np.ndarray, eps: float) -> np.ndarray:
    """(r - mean) / (std + eps) within each group over its valid samples; zero variance gives exactly 0."""
    out = np.zeros(len(scores))
    for g in np.unique(groups):
        members = (groups == g) & valid
        if members.sum() < 2:
            continue
        r = scores[members]
        std = r.std()
        out[members] = 0.0 if std == 0 else (r - r.mean()) / (std + eps)
    return out


def judged_by_all(terms: list[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """The samples every reward judged with a finite score."""
    return np.logical_and.reduce([v & np.isfinite(s) for s, v, _ in terms])


def in_scorable_groups(valid: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The valid samples of the groups that keep at least two valid ones: a group-relative advantage needs two."""
    _, index = np.unique(groups, return_inverse=True)
    return valid & (np.bincount(index, weights=valid)[index] >= 2)


def group_advantages(terms: list[tuple[np.ndarray, np.ndarray, float]], groups: np.ndarray, eps: float,
                     clip: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """terms: (scores, valid, weight) per reward. Returns (advantages, usable): a sample is usable when every
    reward judged it and its group keeps at least two such samples; unusable samples get advantage 0."""
    usable = in_scorable_groups(judged_by_all(terms), groups)
    adv = sum(w * group_normalize(np.where(usable, s, 0.0), groups, usable, eps) for s, _, w in terms)
    if clip is not None:
        adv = np.clip(adv, -clip, clip)
    return np.where(usable, adv, 0.0), usable


def max_variance_subset(scores: np.ndarray, groups: np.ndarray, valid: np.ndarray, keep: int) -> np.ndarray:
    """PODS's max-variance down-sampling: per group, the `keep` valid samples whose scores vary most (all of them
    when a group has no more). Such a set is always some highest k and lowest keep - k of the sorted scores, so
    the keep + 1 splits are all it tries. Returns a bool mask over the samples."""
    selected = np.zeros(len(scores), dtype=bool)
    for g in np.unique(groups):
        members = np.flatnonzero((groups == g) & valid)
        if len(members) <= keep:
            selected[members] = True
            continue
        ranked = members[np.argsort(scores[members], kind="stable")]
        splits = [np.concatenate([ranked[:keep - k], ranked[len(ranked) - k:]]) for k in range(keep + 1)]
        selected[max(splits, key=lambda s: scores[s].var())] = True
    return selected


def combined_scores(terms: list[tuple[np.ndarray, np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray]:
    """The weighted sum of the rewards, and the samples every reward judged (the sum means nothing elsewhere)."""
    valid = judged_by_all(terms)
    return sum(w * np.where(valid, s, 0.0) for s, _, w in terms), valid


def only(terms: list[tuple[np.ndarray, np.ndarray, float]],
         selected: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The terms with every sample outside `selected` marked invalid, so advantages and the update see the
    selection alone."""
    return [(s, v & selected, w) for s, v, w in terms]


def down_sample(terms: list[tuple[np.ndarray, np.ndarray, float]], groups: np.ndarray,
                keep: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The terms restricted to each group's max-variance subset of the combined rewards."""
    total, valid = combined_scores(terms)
    return only(terms, max_variance_subset(total, groups, valid, keep))


def most_varied_groups(total: np.ndarray, groups: np.ndarray, valid: np.ndarray, keep: int) -> np.ndarray:
    """Dynamic sampling: the samples of the `keep` groups whose valid scores spread most (standard deviation;
    a group with fewer than two valid samples ranks last, ties go to the earlier group). Returns a bool mask."""
    ids, scorable = np.unique(groups), in_scorable_groups(valid, groups)
    spread = [total[(groups == g) & scorable].std() if scorable[groups == g].any() else -1.0 for g in ids]
    kept = ids[np.argsort(-np.asarray(spread), kind="stable")[:keep]]
    return np.isin(groups, kept)


def select_groups(terms: list[tuple[np.ndarray, np.ndarray, float]], groups: np.ndarray,
                  keep: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The terms restricted to the `keep` groups whose combined rewards vary most."""
    total, valid = combined_scores(terms)
    return only(terms, most_varied_groups(total, groups, valid, keep))


def iteration_advantages(algo: AlgoConfig, terms: list[tuple[np.ndarray, np.ndarray, float]], reward_names: list[str],
                         prompts: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """An iteration's group-relative advantages over the samples it trains on (after PODS down-sampling and dynamic
    sampling), which samples are usable, and its reward faults: `reward_failures`, per reward, the samples it could
    not score; `dropped_groups`, prompt groups left with fewer than two samples every reward scored."""
    groups = group_ids(prompts, algo.samples_per_prompt)
    trained = terms if algo.rollouts_per_prompt is None else down_sample(terms, groups, algo.group_size)
    if algo.candidate_prompts is not None:
        trained = select_groups(trained, groups, algo.prompts_per_iteration)
    adv, usable = group_advantages(trained, groups, algo.adv_eps, algo.adv_clip)
    scored = in_scorable_groups(judged_by_all(terms), groups)
    faults = {"reward_failures": {name: int((~valid).sum()) for name, (_, valid, _) in zip(reward_names, terms)},
              "dropped_groups": len(np.unique(groups)) - len(np.unique(groups[scored]))}
    return adv, usable, faults
