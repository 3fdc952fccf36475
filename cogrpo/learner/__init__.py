"""Learner: advantages, objectives, the update step, pretraining."""
