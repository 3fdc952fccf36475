"""Where a run directory lands: under train.run_root when relative, and never silently inside the copy of the
working directory that Ray deletes with a job's session."""

import os
import time
from pathlib import Path

import pytest

from cogrpo.cluster.run_dir import LOCK_STALE_S, RAY_WORKING_DIR, RunDir, run_path
from cogrpo.proto.layout import RunLayout
from cogrpo.proto.config import load_config
from cogrpo.proto.errors import InputError


SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke-cpu.yaml")


def config(*overrides: str):
    return load_config(SMOKE, list(overrides))


def test_a_relative_run_directory_goes_under_the_run_root(tmp_path):
    assert run_path(config(f"train.run_root={tmp_path}"), "run") == tmp_path / "run"
    assert run_path(config(f"train.run_root={tmp_path}"), "/abs/run").as_posix() == "/abs/run"
    assert run_path(config(), "run").as_posix() == "run"
    assert run_path(config(f"train.run_root={tmp_path}")).parent == tmp_path / "runs"  # runs/<time>-<mode>


def test_inside_a_ray_job_working_directory_a_relative_run_directory_is_refused(tmp_path, monkeypatch):
    package = tmp_path / "session" / "runtime_resources" / RAY_WORKING_DIR / "_ray_pkg_0123"
    package.mkdir(parents=True)
    monkeypatch.chdir(package)
    with pytest.raises(InputError, match="'run' is relative, inside this Ray job's working directory"):
        run_path(config(), "run")
    with pytest.raises(InputError, match="inside this Ray job's working directory"):
        run_path(config())  # the default runs/<time>-<mode> too
    assert run_path(config(), str(tmp_path / "kept")) == tmp_path / "kept"
    assert run_path(config(f"train.run_root={tmp_path}"), "run") == tmp_path / "run"
    assert run_path(config("train.ephemeral_run_dir=true"), "run").as_posix() == "run"  # said to be meant


def test_object_storage_is_reached_through_a_mount():
    with pytest.raises(InputError, match="object storage is reached through a mount"):
        run_path(config("train.run_root=s3://bucket/runs"), "run")


@pytest.mark.parametrize("age_s, taken", [(10.0, False), (LOCK_STALE_S + 60, True)])
def test_another_hosts_lock_is_stale_once_its_heartbeat_stops(tmp_path, age_s, taken):
    """A retried job's new driver pod (another host) cannot see the old pid: the lock's age tells, as the writer
    touches it every LOCK_BEAT_S while it runs."""
    run = tmp_path / "run"
    run.mkdir()
    lock = RunLayout(run).lock
    lock.write_text("4242 old-driver-pod\n")
    then = time.time() - age_s
    os.utime(lock, (then, then))
    if not taken:
        with pytest.raises(InputError, match="in use by process 4242 on old-driver-pod"):
            RunDir.reopen(config(), run, -1)
        return
    opened = RunDir.reopen(config(), run, -1)
    try:
        assert lock.read_text().split()[0] == str(os.getpid()) and opened._heartbeat.is_alive()
    finally:
        opened.release()
    opened._heartbeat.join(5)
    assert not lock.exists() and not opened._heartbeat.is_alive()
