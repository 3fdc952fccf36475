"""Typed contracts: the config tree and the messages that cross process boundaries."""
