"""The one guarded reader of line input files (JSON lines: metadata, tasks; plain text: prompt lists): every problem
is one InputError naming the file and line, never a traceback, and nothing a hostile file holds (a huge file or
line, deep nesting, a number with thousands of digits) gets past it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from cogrpo.proto.errors import InputError

MAX_LINE = 100_000  # characters of one line
MAX_BYTES = 64 * 2**20  # of one file
MAX_LINES = 1_000_000  # non-blank lines of one file


def read_lines(path: str | Path, what: str) -> Iterator[tuple[str, str]]:
    """("path:line", the line) for each non-blank line of a UTF-8 text file, lines split at newlines only (a form
    feed or U+2028 inside a line is part of it). `what` names the file's kind in errors ("metadata")."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise InputError(f"{what} file {path} is {size:,} bytes, at most {MAX_BYTES:,}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} file is not UTF-8 text: {path}") from None
    found = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if len(line) > MAX_LINE:
            raise InputError(f"{where}: a line is at most {MAX_LINE:,} characters, this one {len(line):,}")
        found += 1
        if found > MAX_LINES:
            raise InputError(f"{what} file {path} has more than {MAX_LINES:,} lines")
        yield where, line
    if not found:
        raise InputError(f"{what} file is empty: {path}")


def read_jsonl(path: str | Path, what: str) -> Iterator[tuple[str, object]]:
    """("path:line", the parsed value) for each non-blank line of a JSONL file (read by `read_lines`)."""
    for where, line in read_lines(path, what):
        try:
            value = json.loads(line)
        except RecursionError:
            raise InputError(f"{where}: malformed JSON (nested too deeply)") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: malformed JSON ({exc.msg})") from None
        except ValueError:  # an integer past Python's digit limit
            raise InputError(f"{where}: malformed JSON (a number too long)") from None
        yield where, value
