"""Progress bars of `cogrpo generate` and `cogrpo eval`: on stderr when it is a terminal, counting the samples
decoded batch by batch; nothing at all when it is not (logs, CI, and the tests that read stderr)."""

import io
import json

import pytest

from cogrpo.cli import main
from cogrpo.data.geneval import write_jsonl
from cogrpo.data.prompts import colors, single_object

FAST = ["--config", "configs/smoke-cpu.yaml", "--steps", "2", "--n-per-prompt", "3", "--set", "sampler.batch_size=2"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def metadata(tmp_path):
    path = tmp_path / "m.jsonl"
    write_jsonl(path, [single_object("square"), colors("red", "circle")])
    return path


def commands(metadata, tmp_path) -> dict[str, list[str]]:
    return {"generate": ["generate", "--metadata", str(metadata), "--outdir", str(tmp_path / "gen"), *FAST],
            "eval": ["eval", "--metadata", str(metadata), "--json", *FAST]}


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_a_terminal_gets_a_bar_over_every_sample(command, metadata, tmp_path, monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(commands(metadata, tmp_path)[command]) == 0
    bar = terminal.getvalue()
    assert "6/6" in bar and "image" in bar  # 2 prompts x 3 images, in batches of 2
    if command == "eval":
        assert json.loads(capsys.readouterr().out)["images"] == 6  # stdout stays one JSON object


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_no_terminal_no_bar(command, metadata, tmp_path, capsys):
    assert main(commands(metadata, tmp_path)[command]) == 0
    assert capsys.readouterr().err == ""
