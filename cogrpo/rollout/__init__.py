"""Rollout: the samplers, the hand schedule, trajectory recording and evaluation."""
