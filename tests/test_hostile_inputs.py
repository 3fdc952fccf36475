"""The second round of hostile input through the CLI (tests/cli_input.py: exit 2, one line, nothing written):
output paths checked before any work, images to score, a cluster address where no Ray cluster answers, metadata
that is well-formed nonsense."""

import io
import socket
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cogrpo.data.prompts import counting, single_object
from tests.cli_input import fails, jsonl

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TEXT = str(CONFIGS / "text-smoke-cpu.yaml")
PRETRAIN = str(CONFIGS / "pretrain-tiny.yaml")
GOOD = jsonl(single_object("square"))
TASKS = jsonl({"task": "arith", "prompt": "347+58=", "answer": "405"})
A_FILE = {"f": b"a file"}


@pytest.mark.parametrize("argv, message, files", [
    (["sample", "--prompt", "a photo of a circle", "--out", "f/x.png"], "'f' is a file, not a directory", A_FILE),
    (["sample", "--prompt", "a photo of a circle", "--out", "d.png"], "--out 'd.png' is a directory", {"d.png": None}),
    (["generate", "--metadata", "m.jsonl", "--outdir", "f/out"], "'f' is a file, not a directory",
     {**A_FILE, "m.jsonl": GOOD}),
    (["generate", "--metadata", "m.jsonl", "--outdir", "f"], "--outdir 'f' exists and is not a directory",
     {**A_FILE, "m.jsonl": GOOD}),
    (["generate", "--metadata", "m.jsonl", "--outdir", "o"], "--outdir 'o' exists and is not empty",
     {"o/x": b"", "m.jsonl": GOOD}),
    (["generate", "--config", TEXT, "--tasks", "t.jsonl", "--out", "f/c.jsonl"], "'f' is a file, not a directory",
     {**A_FILE, "t.jsonl": TASKS}),
    (["generate", "--config", TEXT, "--tasks", "t.jsonl", "--out", "c.jsonl"], "--out 'c.jsonl' is a directory",
     {"c.jsonl": None, "t.jsonl": TASKS}),
    (["eval", "--results", "f/deep/r.jsonl"], "'f' is a file, not a directory", A_FILE),
    (["eval", "--results", "r"], "--results 'r' is a directory", {"r": None}),
    (["train", "--run-dir", "f/run"], "'f' is a file, not a directory", A_FILE),
    (["train", "--run-dir", "f"], "run directory 'f' exists and is not a directory", A_FILE),
    (["pretrain", "--config", PRETRAIN, "--out", "f/m.safetensors"], "'f' is a file, not a directory", A_FILE),
    (["pretrain", "--config", PRETRAIN, "--out", "m.safetensors"], "'m.safetensors' is a directory",
     {"m.safetensors": None}),
])
def test_output_paths_are_checked_before_any_work(argv, message, files, workdir, capfd):
    start = time.time()
    fails(argv, message, workdir, capfd, files)
    assert time.time() - start < 20  # refused before sampling or training, not after


def png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data follows: the size is all that is read)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def real_png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def generation(*samples: tuple[int, bytes]) -> dict[str, bytes]:
    """A GenEval folder: prompt folder index -> one sample's bytes."""
    files = {}
    for index, data in samples:
        files[f"imgs/{index:05d}/metadata.jsonl"] = GOOD
        files[f"imgs/{index:05d}/samples/{len(files):05d}.png"] = data
    return files


@pytest.mark.parametrize("files, message", [
    (generation((0, real_png(64)), (1, real_png(32))), "differ in size (32x32 and 64x64)"),
    (generation((0, real_png(1))), "is 1x1: images to score have sides of at least 16 px"),
    (generation((0, png(20000, 20000))), "claims more pixels than any image to score"),
    (generation((0, png(5000, 5000))), "is 5000x5000"),
    (generation((0, b"\x89PNG\r\n\x1a\n garbage")), "cannot read image"),
])
def test_images_to_score(files, message, workdir, capfd):
    fails(["eval", "--images", "imgs"], message, workdir, capfd, files)


def test_a_cluster_address_where_nothing_listens_is_one_line_at_once(workdir, capfd):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    fails(["train", "--run-dir", "run", "--set", "runtime=ray", "--set", f"cluster.address=127.0.0.1:{port}"],
          f"cluster.address '127.0.0.1:{port}': no Ray cluster answers there", workdir, capfd)


def test_a_cluster_address_that_never_answers_fails_within_the_timeout(workdir, capfd):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        start = time.time()
        fails(["train", "--run-dir", "run", "--set", "runtime=ray", "--set", f"cluster.address={address}",
               "--set", "cluster.timeout_s=2"], f"cluster.address '{address}': no Ray cluster answers there within "
              "cluster.timeout_s 2 s", workdir, capfd)
        assert time.time() - start < 15


@pytest.mark.parametrize("address", ["nonsense", "host:port", "ray://:1", "10.0.0.1:99999"])
def test_a_cluster_address_that_is_not_one(address, workdir, capfd):
    fails(["train", "--run-dir", "run", "--set", "runtime=ray", "--set", f"cluster.address={address}"],
          "is not HOST:PORT, ray://HOST:PORT or auto", workdir, capfd)


def entry(cls: str, count) -> dict:
    return {"class": cls, "count": count}


@pytest.mark.parametrize("record, message", [
    ({**counting(2, "circle"), "include": [entry("circle", 1000)]}, "count must be an integer from 1 to 4 here"),
    ({**counting(2, "circle"), "exclude": [entry("circle", 6)]}, "count must be an integer from 1 to 5 here"),
    ({**counting(2, "circle"), "include": [entry("circle", 10**40)]}, "count must be an integer from 1 to 4"),
    ({**single_object("square"), "exclude": 5}, "exclude must be a list"),
    ({**single_object("square"), "exclude": None}, "exclude must be a list"),
    ({**single_object("square"), "prompt": "a photo of a circle"},
     "the prompt 'a photo of a circle' disagrees with the record's include"),
    ({**counting(3, "circle"), "prompt": "a photo of two circles"},
     "the prompt 'a photo of two circles' disagrees with the record's include"),
    ({**single_object("square"), "tag": "counting"},
     "the prompt 'a photo of a square' disagrees with the record's tag"),
])
def test_metadata_that_says_nonsense(record, message, workdir, capfd):
    fails(["generate", "--metadata", "m.jsonl", "--outdir", "out"], f"m.jsonl:1: {message}", workdir, capfd,
          {"m.jsonl": jsonl(record)})
