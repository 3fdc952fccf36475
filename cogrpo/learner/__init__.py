"""Learner: advantages, the objectives of both policies, the update step, theta's moving average, the learner's
checkpoint state, pretraining. It sees per-step action log-probs, advantages and named tensors, never tokens or
pixels."""
