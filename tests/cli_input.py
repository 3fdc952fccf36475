"""Running the CLI on hostile input (cogrpo.cli.main): one line on stderr naming the problem, exit code 2, and
nothing written (no run directory, no output file) in the folder the command ran in."""

import json

import pytest

from cogrpo.cli import main


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty folder to run in; `files` are written into it before the command, and only they may remain. Any
    Ray started here runs without token auth (with RAY_AUTH_MODE unset, Ray would write ~/.ray/auth_token)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    return tmp_path


def write_files(folder, files: dict[str, bytes | None]) -> None:
    """files: relative path -> content, or None for an empty folder."""
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)


def fails(argv: list[str], message: str, workdir, capfd, files: dict[str, bytes | None] | None = None) -> str:
    """files: written first (write_files). stderr is read at the file descriptor, so what Ray or a native library
    writes there counts too."""
    write_files(workdir, files or {})
    before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
    capfd.readouterr()
    assert main(argv) == 2
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("cogrpo: error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before, "something was written"
    return err


def jsonl(*records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()
