"""Contracts: the config tree, the messages that cross process boundaries, the model-family seam, the run-directory
layout, plugins and error formatting."""
