"""Masked-token models, their tokenizers and text conditioning, and the schedule policy network."""
