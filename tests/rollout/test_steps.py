import torch

from cogrpo.proto.config import StepSubsetConfig
from cogrpo.rollout.steps import step_plan


def test_all_steps():
    p = step_plan(StepSubsetConfig(mode="all"), 8, 0, 0)
    assert p.plan == list(range(8)) and p.trained == list(range(8)) and p.stochastic.all()


def test_random_fraction_is_reproducible_and_varies():
    config = StepSubsetConfig(mode="random", fraction=0.5)
    a, b = step_plan(config, 8, 3, 0), step_plan(config, 8, 3, 0)
    assert a.trained == b.trained and len(a.trained) == 4 and a.stochastic.all()
    assert len({tuple(step_plan(config, 8, i, 0).trained) for i in range(10)}) > 1


def test_sliding_window_moves_by_stride_every_tau_and_stops_at_the_end():
    config = StepSubsetConfig(mode="window", window=3, shift_every=2, stride=1)
    starts = [step_plan(config, 8, i, 0).trained[0] for i in range(14)]
    assert starts == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5, 5]
    p = step_plan(config, 8, 4, 0)  # window at steps 2, 3, 4
    assert p.plan == list(range(8)) and p.trained == [2, 3, 4]
    assert p.stochastic.tolist() == [False, False, True, True, True, False, False, False]


def test_flash_mode_uses_fewer_steps_after_the_window_only():
    config = StepSubsetConfig(mode="window", window=2, shift_every=1, stride=1, flash_ratio=0.4)
    p = step_plan(config, 10, 1, 0)  # window at 1, 2; 7 steps after it -> 3
    assert p.plan[:3] == [0, 1, 2] and p.plan[-1] == 9 and len(p.plan) == 3 + 3
    assert p.trained == [1, 2] and torch.equal(p.stochastic, torch.tensor([False, True, True, False, False, False]))


def test_outside_the_window_steps_decode_stochastically_but_untrained_when_asked():
    config = StepSubsetConfig(mode="window", window=3, shift_every=2, stride=1, outside="stochastic")
    p = step_plan(config, 8, 4, 0)
    assert p.trained == [2, 3, 4] and p.stochastic.all()
    assert p.trained_mask(5).equal(torch.tensor([[False, False, True, True, True, False, False, False]] * 5))


def test_a_random_subset_per_sample_gives_each_sample_its_own_steps_reproducibly():
    config = StepSubsetConfig(mode="random", fraction=0.25, random_per="sample")
    p = step_plan(config, 8, 3, 0)
    mask = p.trained_mask(64)
    assert (mask.sum(1) == 2).all() and p.stochastic.all()  # a quarter of 8 steps, every sample
    assert len({tuple(row.tolist()) for row in mask}) > 10  # the samples differ
    assert torch.equal(mask, step_plan(config, 8, 3, 0).trained_mask(64))  # reproducible from (seed, iteration)
    assert not torch.equal(mask, step_plan(config, 8, 4, 0).trained_mask(64))  # and new each iteration
    per_iteration = step_plan(StepSubsetConfig(mode="random", fraction=0.25), 8, 3, 0).trained_mask(64)
    assert len({tuple(row.tolist()) for row in per_iteration}) == 1


def test_the_random_window_lands_anywhere_and_holds_for_shift_every_iterations():
    config = StepSubsetConfig(mode="window", window=2, shift_every=3, shift="random")
    starts = [step_plan(config, 8, iteration, 0).trained[0] for iteration in range(60)]
    assert all(starts[k] == starts[k - k % 3] for k in range(60))  # moves only every shift_every iterations
    assert len(set(starts)) >= 5 and min(starts) >= 0 and max(starts) <= 6  # anywhere the window fits
    assert starts == [step_plan(config, 8, iteration, 0).trained[0] for iteration in range(60)]  # reproducible


def test_a_window_with_stride_zero_stays_at_the_start():
    config = StepSubsetConfig(mode="window", window=2, shift_every=1, stride=0)
    assert {tuple(step_plan(config, 8, iteration, 0).trained) for iteration in range(20)} == {(0, 1)}
