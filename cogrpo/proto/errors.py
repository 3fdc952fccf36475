"""The two exception types every face maps to one clear line, bad input (exit code 2) and a fault the run could
not survive (exit code 1), and the helpers that keep an error message to one short line."""


class InputError(ValueError):
    """Bad user input: config, prompts, metadata, checkpoint or CLI arguments."""


class Interrupted(Exception):
    """Ctrl-C (SIGINT) during a command; its message says where a run can continue. Exit code 130."""


class FaultError(RuntimeError):
    """A failure the runtime could not recover from (a dead learner, an actor out of restarts). Its message names
    the last complete checkpoint, where the run can continue."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none): what a one-line error quotes."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def last_line(exc: BaseException) -> str:
    """The last line of an exception's message, for libraries that put the useful part last (pickle's refusals)."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def clip(text: str, limit: int = 60) -> str:
    """User input quoted in an error message, shortened so the message stays one readable line."""
    return text if len(text) <= limit else text[:limit] + "..."
