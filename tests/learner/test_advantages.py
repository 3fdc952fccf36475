import itertools

import numpy as np
import pytest

from cogrpo.learner.advantages import (down_sample, group_advantages, group_normalize, max_variance_subset,
                                      most_varied_groups, select_groups)


def test_group_relative_advantage_is_z_score_within_each_group():
    scores = np.array([1.0, 0.0, 0.0, 0.0, 5.0, 7.0])
    groups = np.array([0, 0, 0, 0, 1, 1])
    adv = group_normalize(scores, groups, np.ones(6, bool), eps=0.0)
    r = scores[:4]
    assert np.allclose(adv[:4], (r - r.mean()) / r.std())
    assert np.allclose(adv[4:], [-1.0, 1.0])


def test_zero_variance_group_gives_zero_advantage_not_nan():
    adv, usable = group_advantages([(np.ones(4), np.ones(4, bool), 1.0)], np.zeros(4, int), eps=1e-4)
    assert np.all(adv == 0) and np.isfinite(adv).all() and usable.all()


def test_several_rewards_are_normalised_one_by_one_then_weighted():
    groups = np.zeros(4, int)
    a, b = np.array([0.0, 1.0, 0.0, 1.0]), np.array([10.0, 20.0, 30.0, 40.0])
    ones = np.ones(4, bool)
    adv, _ = group_advantages([(a, ones, 1.0), (b, ones, 0.5)], groups, eps=0.0)
    expected = (a - a.mean()) / a.std() + 0.5 * (b - b.mean()) / b.std()
    assert np.allclose(adv, expected)  # b's scale does not swamp a


def test_invalid_and_nan_scores_are_masked_and_thin_groups_dropped():
    scores = np.array([1.0, np.nan, 0.0, 1.0, 0.0, 1.0])
    valid = np.array([True, True, True, False, True, True])
    groups = np.array([0, 0, 0, 1, 1, 2])
    adv, usable = group_advantages([(scores, valid, 1.0)], groups, eps=0.0)
    assert usable.tolist() == [True, False, True, False, False, False]
    assert np.allclose(adv[usable], [1.0, -1.0]) and np.all(adv[~usable] == 0)


def test_advantage_clipping():
    scores = np.array([0.0] * 9 + [1.0])
    adv, _ = group_advantages([(scores, np.ones(10, bool), 1.0)], np.zeros(10, int), eps=0.0, clip=2.0)
    assert adv.max() == pytest.approx(2.0)


def test_max_variance_subset_matches_exhaustive_search():
    rng = np.random.default_rng(0)
    for trial in range(50):
        scores = rng.choice([0.0, 0.5, 1.0, 1.5], size=7) if trial % 2 else rng.normal(size=7)
        chosen = max_variance_subset(scores, np.zeros(7, int), np.ones(7, bool), keep=4)
        best = max(np.var(scores[list(c)]) for c in itertools.combinations(range(7), 4))
        assert chosen.sum() == 4 and np.var(scores[chosen]) == pytest.approx(best)


def test_max_variance_subset_keeps_extremes_per_group_and_skips_invalid():
    scores = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 9.0, 5.0, 5.0, 5.0, 5.0])
    valid = np.array([True] * 5 + [False] + [True] * 4)
    chosen = max_variance_subset(scores, np.repeat([0, 1], 5), valid, keep=2)
    assert chosen[3] and chosen[:5].sum() == 2  # the lone success and one failure
    assert not chosen[5] and chosen[5:].sum() == 2  # the invalid 9.0 is never picked
    small = max_variance_subset(scores[:3], np.zeros(3, int), np.ones(3, bool), keep=4)
    assert small.all()  # a group with fewer samples than keep keeps them all


def test_down_sampled_terms_give_advantages_over_the_subset_alone():
    strict = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    partial = np.array([0.5, 0.0, 0.5, 1.0, 0.5, 0.0])
    ones = np.ones(6, bool)
    terms = down_sample([(strict, ones, 1.0), (partial, ones, 0.5)], np.zeros(6, int), keep=3)
    adv, usable = group_advantages(terms, np.zeros(6, int), eps=0.0)
    assert usable.sum() == 3 and usable[3] and usable[1]  # the success and the two total failures
    assert adv[3] > 0 and np.all(adv[~usable] == 0)


def test_most_varied_groups_keeps_the_widest_spreads_and_ranks_thin_groups_last():
    total = np.array([1.0, 1.0, 1.0,  0.0, 1.0, 0.0,  0.0, 0.2, 0.0,  5.0, 0.0, 0.0])
    valid = np.array([True] * 9 + [True, False, False])  # group 3 has a single valid sample
    groups = np.repeat([0, 1, 2, 3], 3)
    assert np.unique(groups[most_varied_groups(total, groups, valid, keep=2)]).tolist() == [1, 2]
    kept = most_varied_groups(total, groups, valid, keep=3)  # the uniform group 0 before thin group 3
    assert np.unique(groups[kept]).tolist() == [0, 1, 2]
    assert kept.sum() == 9  # a kept group keeps all its samples


def test_selected_groups_alone_get_advantages_and_the_others_none():
    strict = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    partial = np.array([0.5, 0.5, 0.5, 0.6, 1.0, 0.0, 1.0, 1.0])
    ones = np.ones(8, bool)
    groups = np.repeat([0, 1, 2, 3], 2)
    terms = select_groups([(strict, ones, 1.0), (partial, ones, 0.5)], groups, keep=2)
    adv, usable = group_advantages(terms, groups, eps=0.0)
    assert usable.tolist() == [False, False, True, True, True, True, False, False]  # combined spread: 0, .025, .75, 0
    assert np.all(adv[~usable] == 0) and adv[4] > 0 > adv[5]
