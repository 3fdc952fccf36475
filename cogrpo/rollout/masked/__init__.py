"""Masked-token decoding shared by the masked image and masked text families: the sampler and theta's estimators."""
