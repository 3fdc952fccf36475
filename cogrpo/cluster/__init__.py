"""Runtimes: the one training loop, the single-process and the Ray runtime, the builder both use, metrics, plots,
run directories."""
