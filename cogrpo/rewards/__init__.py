"""Rewards behind one interface: images + prompts/metadata -> (scores, valid)."""
