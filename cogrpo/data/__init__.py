"""Worlds and data: the shapes world, GenEval-style prompts and metadata, GenEval file formats, weight files."""
