"""A run directory: the resolved config, metrics.jsonl, eval.jsonl, plots, sample grids and checkpoints."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cogrpo.proto.config import Config, dump_config
from cogrpo.proto.errors import InputError


class RunDir:
    def __init__(self, path: Path):
        self.path = path
        self.metrics: list[dict] = []
        self.evals: list[dict] = []

    @classmethod
    def create(cls, config: Config, override: str | None = None) -> RunDir:
        path = Path(override or config.train.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.algo.mode}")
        if path.exists() and not path.is_dir():
            raise InputError(f"run directory {path} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            raise InputError(f"run directory {path} is not empty (pick another --run-dir)")
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.yaml").write_text(dump_config(config))
        return cls(path)

    def _append(self, name: str, row: dict) -> None:
        with open(self.path / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def log_metrics(self, row: dict) -> None:
        self.metrics.append(row)
        self._append("metrics.jsonl", row)

    def log_eval(self, row: dict) -> None:
        self.evals.append(row)
        self._append("eval.jsonl", row)
