"""A run directory: the resolved config, metrics.jsonl, eval.jsonl, plots, sample grids and checkpoints."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cogrpo.proto.config import Config, dump_config
from cogrpo.proto.errors import InputError


def run_path(config: Config, override: str | None = None) -> Path:
    return Path(override or config.train.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.algo.mode}")


class RunDir:
    def __init__(self, path: Path):
        self.path = path
        self.metrics: list[dict] = []
        self.evals: list[dict] = []

    @classmethod
    def create(cls, config: Config, override: str | None = None) -> RunDir:
        path = run_path(config, override)
        if path.is_dir() and any(path.iterdir()):
            raise InputError(f"run directory {path} is not empty (pick another --run-dir, or continue it with "
                             "--resume auto)")
        return cls._open(config, path)

    @classmethod
    def reopen(cls, config: Config, path: Path, through: int) -> RunDir:
        """An existing run continued after its checkpoint at iteration `through` (-1: it has none, so it starts
        over). Rows past it are dropped (a killed job may have logged some), so the continued run appends without
        duplicating or losing any; config.yaml becomes this invocation's config."""
        run = cls._open(config, path)
        run.metrics = run._keep_rows("metrics.jsonl", through)
        run.evals = run._keep_rows("eval.jsonl", through)
        return run

    @classmethod
    def _open(cls, config: Config, path: Path) -> RunDir:
        if path.exists() and not path.is_dir():
            raise InputError(f"run directory {path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.yaml").write_text(dump_config(config))
        return cls(path)

    def _keep_rows(self, name: str, through: int) -> list[dict]:
        """The file's rows up to iteration `through`, rewritten atomically. A line a killed job left half-written
        is not a row."""
        path = self.path / name
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        rows = [row for row in map(_parse_row, lines) if row is not None and row["iteration"] <= through]
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        os.replace(tmp, path)
        return rows

    def _append(self, name: str, row: dict) -> None:
        with open(self.path / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def log_metrics(self, row: dict) -> None:
        self.metrics.append(row)
        self._append("metrics.jsonl", row)

    def log_eval(self, row: dict) -> None:
        self.evals.append(row)
        self._append("eval.jsonl", row)


def _parse_row(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("iteration"), int) else None
