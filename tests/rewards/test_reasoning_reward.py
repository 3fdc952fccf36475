import numpy as np
import pytest

from cogrpo.proto.config import RewardConfig
from cogrpo.proto.kinds import REWARD_SCORES
from cogrpo.rewards.reasoning import ReasoningReward, summarize_texts
from cogrpo.rewards.registry import build_reward

ARITH = {"task": "arith", "prompt": "347+58=", "answer": "405"}
ARITH_2 = {"task": "arith", "prompt": "47*8=", "answer": "376"}
SUDOKU = {"task": "sudoku", "prompt": "1234341220404020", "answer": "1234341221434321"}
COUNTDOWN = {"task": "countdown", "prompt": "3,7,25->46", "answer": "25+3*7"}

# (task, completion, correct, well formed)
CASES = [
    (ARITH, "#405", 1.0, 1.0),
    (ARITH, "347+58=405#405", 1.0, 1.0),  # a scratchpad before the marker is the model's business
    (ARITH, "#404", 0.0, 1.0),
    (ARITH, "405", 0.0, 0.0),
    (ARITH, "", 0.0, 0.0),
    (SUDOKU, "#1234341223414123", 1.0, 1.0),  # the puzzle's other solution
    (SUDOKU, "#1234341221434312", 0.0, 1.0),
    (COUNTDOWN, "#(7*3)+25", 1.0, 1.0),
    (COUNTDOWN, "#25+21", 0.0, 1.0),
    (COUNTDOWN, "#3/0", 0.0, 1.0),
]


@pytest.mark.parametrize("head, column", [("correct", 2), ("format", 3)])
def test_heads_score_each_completion_against_its_own_task(head, column):
    reward = build_reward(RewardConfig(kind="reasoning", head=head))
    assert isinstance(reward, ReasoningReward) and reward.name == f"reasoning_{head}"
    tasks, texts = [c[0] for c in CASES], [c[1] for c in CASES]
    scores, valid = reward.score(texts, [t["prompt"] for t in tasks], tasks)
    assert scores.dtype == np.float64 and valid.dtype == bool and valid.all()
    np.testing.assert_array_equal(scores, [c[column] for c in CASES])


def test_a_completion_is_scored_against_its_own_task_not_a_neighbours():
    reward = ReasoningReward("correct")
    scores, _ = reward.score(["#405", "#376"], ["347+58=", "47*8="], [ARITH_2, ARITH])
    np.testing.assert_array_equal(scores, [0.0, 0.0])


def test_misaligned_inputs_are_refused():
    with pytest.raises(ValueError):
        ReasoningReward().score(["#405", "#405"], ["347+58="], [ARITH])


def test_reasoning_scores_texts_as_the_catalogue_says():
    assert ReasoningReward.scores == REWARD_SCORES["reasoning"] == "texts"


def test_summary_accuracy_is_the_mean_over_tasks_of_per_task_accuracy():
    # two samples per record; arith has two records (4 samples, 3 right), sudoku 2 (1 right), countdown 2 (0 right)
    records = [ARITH, ARITH_2, SUDOKU, COUNTDOWN]
    samples = ["#405", "#404", "#376", "x#376", "#1234341223414123", "#1234341221434312", "#25+3", "no answer"]
    summary, rows = summarize_texts(records, samples)
    assert summary["by_task"] == {"arith": 0.75, "countdown": 0.0, "sudoku": 0.5}
    assert summary["accuracy"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)  # not the sample mean, 4 / 8
    assert summary["samples"] == 8
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in records for _ in range(2)]
    assert [r["correct"] for r in rows] == [True, False, True, True, True, False, False, False]
    assert [r["extracted"] for r in rows] == ["405", "404", "376", "376", "1234341223414123", "1234341221434312",
                                           "25+3", None]
    assert rows[3] == {"task": "arith", "prompt": "47*8=", "reference": "376", "completion": "x#376",
                       "extracted": "376", "correct": True}
    assert rows[4]["reference"] == SUDOKU["answer"] != rows[4]["extracted"]  # a different solution, still correct


def test_summary_names_only_the_tasks_evaluated():
    summary, rows = summarize_texts([SUDOKU], ["#1234341221434321"])
    assert summary == {"accuracy": 1.0, "by_task": {"sudoku": 1.0}, "samples": 1} and len(rows) == 1
