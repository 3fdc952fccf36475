"""Theta's moving average: the closed form of an exponential average, buffers that are not averaged, and an
evaluation that leaves the live weights as they were."""

import pytest
import torch

from cogrpo.learner.averaging import WeightAverage, weights_swapped_in


def test_the_average_starts_at_the_first_weights_and_then_moves_by_one_minus_decay():
    average = WeightAverage(0.75)
    states = [{"w": torch.tensor([4.0, 8.0], dtype=torch.bfloat16), "steps": torch.tensor(k)} for k in range(3)]
    states[1]["w"] = torch.tensor([0.0, 0.0], dtype=torch.bfloat16)
    states[2]["w"] = torch.tensor([8.0, 0.0], dtype=torch.bfloat16)
    for state in states:
        average.update(state)
    # w: 4 -> 0.75 * 4 + 0.25 * 0 = 3 -> 0.75 * 3 + 0.25 * 8 = 4.25; 8 -> 6 -> 4.5, kept in fp32
    assert average.state["w"].dtype == torch.float32
    torch.testing.assert_close(average.state["w"], torch.tensor([4.25, 4.5]))
    assert average.state["steps"].item() == 2  # an integer buffer follows the live one
    states[2]["w"].fill_(100.0)
    torch.testing.assert_close(average.state["w"], torch.tensor([4.25, 4.5]))  # copies, not views


def test_weights_swapped_in_evaluate_the_average_and_put_the_live_weights_back_even_on_error():
    model = torch.nn.Linear(2, 1)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    other = {k: torch.full_like(v, 3.0) for k, v in live.items()}
    with weights_swapped_in(model, other):
        assert torch.equal(model.weight, torch.full((1, 2), 3.0))
    with pytest.raises(RuntimeError), weights_swapped_in(model, other):
        raise RuntimeError("an evaluation failed")
    for name, value in model.state_dict().items():
        assert torch.equal(value, live[name]), name
    with weights_swapped_in(model, None):  # no average yet: the live weights
        assert torch.equal(model.weight, live["weight"])
