"""One exception type for bad input, so every face can map it to one clear line and exit code 2."""


class InputError(ValueError):
    """Bad user input: config, prompts, metadata, checkpoint or CLI arguments."""
