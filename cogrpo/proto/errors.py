"""The two exception types every face maps to one clear line: bad input (exit code 2) and a fault the run could
not survive (exit code 1)."""


class InputError(ValueError):
    """Bad user input: config, prompts, metadata, checkpoint or CLI arguments."""


class FaultError(RuntimeError):
    """A failure the runtime could not recover from (a dead learner, an actor out of restarts). Its message names
    the last complete checkpoint, where the run can continue."""
