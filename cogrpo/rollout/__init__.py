"""Rollout: per model family its sampler and likelihood estimators (masked_image/, flow_image/), step plans,
schedules, the one batching-and-seed rule, collection and evaluation."""
