"""The one guarded reader of JSON-lines input files (metadata, tasks): every problem is one InputError naming the
file and line, never a traceback, and nothing a hostile line holds (a huge line, deep nesting, a number with
thousands of digits) gets past it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from cogrpo.proto.errors import InputError

MAX_LINE = 100_000  # characters of one line


def read_jsonl(path: str | Path, what: str) -> Iterator[tuple[str, object]]:
    """("path:line", the parsed value) for each non-blank line of a UTF-8 JSONL file, lines split at newlines only
    (a form feed or U+2028 inside a line is part of it). `what` names the file's kind in errors ("metadata")."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} file is not UTF-8 text: {path}") from None
    found = False
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if len(line) > MAX_LINE:
            raise InputError(f"{where}: a line is at most {MAX_LINE:,} characters, this one {len(line):,}")
        try:
            value = json.loads(line)
        except RecursionError:
            raise InputError(f"{where}: malformed JSON (nested too deeply)") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: malformed JSON ({exc.msg})") from None
        except ValueError:  # an integer past Python's digit limit
            raise InputError(f"{where}: malformed JSON (a number too long)") from None
        found = True
        yield where, value
    if not found:
        raise InputError(f"{what} file is empty: {path}")
