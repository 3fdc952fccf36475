"""The one check of an output path, done before any work: a command that would fail writing its result after
minutes of sampling or training fails at once instead, with one line."""

from __future__ import annotations

import os
from pathlib import Path

from cogrpo.proto.errors import InputError, clip


def _writable_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor of `path` is a directory this process may write into (it creates the rest)."""
    ancestor = path.parent  # relative paths end at ".", which exists
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{flag} {clip(str(path))!r}: {clip(str(ancestor))!r} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {clip(str(path))!r}: {clip(str(ancestor))!r} is not writable")


def output_file(path: str | Path, flag: str, suffix: str | None = None) -> Path:
    """A file to write (or overwrite): with its suffix, not a directory, in a place that can hold it."""
    out = Path(path)
    if suffix is not None and out.suffix.lower() != suffix:
        raise InputError(f"{flag} must be a {suffix} file, got {clip(str(path))!r}")
    if out.is_dir():
        raise InputError(f"{flag} {clip(str(path))!r} is a directory")
    if out.exists() and not os.access(out, os.W_OK):
        raise InputError(f"{flag} {clip(str(path))!r} is not writable")
    _writable_parent(out, flag)
    return out


def output_folder(path: str | Path, flag: str, empty: bool = True) -> Path:
    """A folder to create or write into: a directory (empty, when `empty`) or nothing yet, in a place that can hold
    it."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag} {clip(str(path))!r} exists and is not a directory")
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError(f"{flag} {clip(str(path))!r} is not writable")
        if empty and any(out.iterdir()):
            raise InputError(f"{flag} {clip(str(path))!r} exists and is not empty")
        return out
    _writable_parent(out, flag)
    return out
