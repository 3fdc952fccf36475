"""A run directory as the loop keeps it (its layout is cogrpo/proto/layout.py): created for a new run, or reopened
where a resumed run continues, with the rows logged so far. One process writes a run directory at a time: it holds
the directory's lock file (its pid and host) until it closes; a lock whose process is gone is taken over."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cogrpo.proto.config import Config, dump_config
from cogrpo.proto.errors import InputError, clip
from cogrpo.proto.layout import CheckpointLayout, RunLayout
from cogrpo.proto.paths import output_folder


LOCK_BEAT_S, LOCK_STALE_S = 30.0, 120.0  # the writer touches its lock this often; older, another host's is stale
RAY_WORKING_DIR = "working_dir_files"  # where Ray unpacks a job's --working-dir (<session>/runtime_resources/...)


def run_path(config: Config, override: str | None = None) -> Path:
    """The run directory: --run-dir, train.run_dir or runs/<time>-<mode>, under train.run_root when relative. A
    relative one inside a Ray job's working-directory package is refused (Ray deletes that copy with its session,
    and the run with it) unless train.ephemeral_run_dir says so."""
    path = Path(override or config.train.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.algo.mode}")
    root = config.train.run_root
    if root is not None and "://" in root:
        raise InputError(f"train.run_root {clip(root)!r}: object storage is reached through a mount (mountpoint-s3, "
                         "gcsfuse, a shared filesystem): give the mounted path")
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    if not path.is_absolute() and _in_ray_working_dir() and not config.train.ephemeral_run_dir:
        raise InputError(f"run directory {clip(str(path))!r} is relative, inside this Ray job's working directory, "
                         "which Ray deletes with the cluster: give an absolute --run-dir or train.run_root (a "
                         "shared filesystem), or set train.ephemeral_run_dir=true")
    return path


def _in_ray_working_dir() -> bool:
    """This process runs in (or its code came from) a Ray job's working-directory package; a directory Ray deleted
    and is unpacking again counts as one."""
    try:
        cwd = Path.cwd().parts
    except FileNotFoundError:
        return True
    return RAY_WORKING_DIR in cwd or RAY_WORKING_DIR in Path(__file__).parts


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: its run directory and the checkpoint with that checkpoint's driver state
    (checkpoint None: the run has none yet, so it starts over in its directory)."""

    run: Path
    checkpoint: Path | None
    state: dict


def resume_point(config: Config, run_dir: str | None, resume: str | None) -> ResumePoint | None:
    """`resume`: None (a new run), "auto" (the run's latest complete checkpoint, if any) or a checkpoint folder of
    the run. Checked before any worker starts: a run with nothing left to do, or a checkpoint of the other
    runtime (their learner states differ), fails at once."""
    if resume is None:
        return None
    if not (run_dir or config.train.run_dir):
        raise InputError("--resume needs the run to continue: --run-dir (or train.run_dir)")
    path = run_path(config, run_dir)
    layout = RunLayout(path)
    checkpoint = layout.latest() if resume == "auto" else Path(resume)
    if checkpoint is None:
        if path.is_dir() and any(path.iterdir()) and not layout.marker.is_file():
            raise InputError(f"--resume auto: {path} is not a cogrpo run directory (no {layout.marker.name}) and not "
                             "empty: nothing of it would be kept, so it is left alone")
        return ResumePoint(path, None, {})
    if not layout.holds(checkpoint):
        raise InputError(f"--resume {resume}: not a checkpoint folder of run directory {path} "
                         "(<run>/checkpoints/iter_NNNNNN)")
    state = CheckpointLayout(checkpoint).read_state()
    if state.get("runtime") != config.runtime:
        raise InputError(f"checkpoint {checkpoint} was written by runtime {state.get('runtime')}, not "
                         f"{config.runtime}: resume it with --set runtime={state.get('runtime')}")
    if state["iteration"] >= config.train.iterations:
        raise InputError(f"nothing to do: checkpoint {checkpoint} is at iteration {state['iteration']} and "
                         f"train.iterations is {config.train.iterations} (ask for more with --set "
                         "train.iterations=N)")
    return ResumePoint(path, checkpoint, state)


class RunDir:
    def __init__(self, path: Path):
        self.path = path
        self.layout = RunLayout(path)
        self.metrics: list[dict] = []
        self.evals: list[dict] = []
        self.locked = False
        self._stopped = threading.Event()

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
        run.metrics = run._keep_rows(run.layout.metrics, through)
        run.evals = run._keep_rows(run.layout.evals, through)
        return run

    @classmethod
    def _open(cls, config: Config, path: Path) -> RunDir:
        output_folder(path, "run directory", empty=False)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        run._claim()
        run.layout.marker.touch()
        run.layout.config.write_text(dump_config(config))
        return run

    def _claim(self) -> None:
        """Take the directory's lock, or refuse naming the process that holds it."""
        lock = self.layout.lock
        mine = lock.with_name(f".lock.{os.getpid()}")  # written whole, then linked: a lock is never half-written
        mine.write_text(f"{os.getpid()} {socket.gethostname()}\n", encoding="utf-8")
        try:
            for _ in range(2):
                try:
                    os.link(mine, lock)
                except FileExistsError:
                    owner = _live_owner(lock)
                    if owner is not None:
                        raise InputError(f"run directory {self.path} is in use by {owner} (a run directory has one "
                                         f"writer; if that process is gone, delete {lock})") from None
                    lock.unlink(missing_ok=True)  # its process is gone
                    continue
                self.locked = True
                self._heartbeat = threading.Thread(target=self._beat, daemon=True, name="cogrpo-run-lock")
                self._heartbeat.start()
                return
        finally:
            mine.unlink(missing_ok=True)
        raise InputError(f"run directory {self.path}: cannot take its lock {lock}")

    def _beat(self) -> None:
        """Touch the lock while this process holds it: another host tells a dead writer's lock by its age."""
        while not self._stopped.wait(LOCK_BEAT_S):
            try:
                os.utime(self.layout.lock)
            except OSError:
                return

    def release(self) -> None:
        """Give the lock back (once; the loop calls it when it closes)."""
        if self.locked:
            self._stopped.set()
            self.layout.lock.unlink(missing_ok=True)
            self.locked = False

    @staticmethod
    def _keep_rows(path: Path, through: int) -> list[dict]:
        """The file's rows up to iteration `through`, rewritten atomically. A line a killed job left half-written
        is not a row."""
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        rows = [row for row in map(_parse_row, lines) if row is not None and row["iteration"] <= through]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        os.replace(tmp, path)
        return rows

    @staticmethod
    def _append(path: Path, row: dict) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def log_metrics(self, row: dict) -> None:
        self.metrics.append(row)
        self._append(self.layout.metrics, row)

    def log_eval(self, row: dict) -> None:
        self.evals.append(row)
        self._append(self.layout.evals, row)


def _live_owner(lock: Path) -> str | None:
    """"process PID on HOST" when the lock's writer may still run, else None. On this host its pid tells; another
    host's writer (a retried job's earlier driver pod) is gone once its heartbeat is LOCK_STALE_S old."""
    try:
        pid_text, host = lock.read_text(encoding="utf-8").split()
        pid = int(pid_text)
        age = time.time() - lock.stat().st_mtime
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # not a lock this code writes (they are written whole)
    if host != socket.gethostname() and age > LOCK_STALE_S:
        return None
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return f"process {pid} on {host}"


def _parse_row(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("iteration"), int) else None
