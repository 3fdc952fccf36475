"""The reasoning world's verifier as a reward: a completion's final answer checked against its task (exactly for
arith, by validity for sudoku and countdown), or a small format reward; and a text evaluation's summary, accuracy
per task and their mean."""

from __future__ import annotations

from collections import defaultdict
from typing import ClassVar

import numpy as np

from cogrpo.data.reasoning import answer_of, is_correct, well_formed
from cogrpo.rewards.interface import Reward


class ReasoningReward(Reward):
    """score(completions, prompts, tasks): 1 for a solved task (head `correct`) or a well-formed completion (head
    `format`), else 0. Every sample can be judged."""

    scores: ClassVar[str] = "texts"

    def __init__(self, head: str = "correct", name: str | None = None):
        self.head = head
        self.name = name or f"reasoning_{head}"

    def score(self, texts, prompts, metadata):
        check = (lambda task, text: is_correct(task, answer_of(task, text))) if self.head == "correct" else well_formed
        scores = np.array([float(check(task, text)) for task, text in zip(metadata, texts, strict=True)])
        return scores, np.ones(len(scores), dtype=bool)


def summarize_texts(records: list[dict], samples: list[str]) -> tuple[dict, list[dict]]:
    """Accuracy per task and their mean (`accuracy`), over samples (len(records) * n, each record's n together), and
    one row per sample: its task, prompt and reference answer, the completion, the answer extracted from it and its
    correctness."""
    per_record = len(samples) // len(records)
    rows, by_task = [], defaultdict(list)
    for k, text in enumerate(samples):
        task = records[k // per_record]
        answer = answer_of(task, text)
        correct = is_correct(task, answer)
        by_task[task["task"]].append(correct)
        rows.append({"task": task["task"], "prompt": task["prompt"], "reference": task["answer"], "completion": text,
                     "extracted": answer, "correct": correct})
    accuracy = {name: float(np.mean(v)) for name, v in sorted(by_task.items())}
    return {"accuracy": float(np.mean(list(accuracy.values()))), "by_task": accuracy, "samples": len(samples)}, rows
