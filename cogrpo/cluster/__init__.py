"""Runtimes: the single-process trainer and the Ray runtime."""
