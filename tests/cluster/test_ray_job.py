"""The way users launch cogrpo on a cluster: a real two-node cluster started with `ray start` on loopback
addresses, the smoke config submitted with `ray job submit --working-dir .`, SUCCEEDED, then `ray stop`."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _ray(*args: str, timeout: float = 120) -> str:
    done = subprocess.run([str(BIN / "ray"), *args], env=ENV, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"ray {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def _submit(address: str, command: list[str], patience_s: float = 300) -> str:
    """`ray job submit`, retried while the head's job agent is still starting (Ray answers "No available agent
    to submit job, please try again later" for a while after `ray start` on a busy machine)."""
    deadline = time.time() + patience_s
    while True:
        done = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address, "--no-wait",
                               "--working-dir", ".", "--", *command], env=ENV, cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        out = done.stdout + done.stderr
        if done.returncode == 0 or "No available agent" not in out or time.time() > deadline:
            assert done.returncode == 0, f"ray job submit failed:\n{out[-3000:]}"
            return out
        time.sleep(3)


@pytest.fixture
def two_node_cluster():
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    gcs, dashboard = _free_port(), _free_port()
    store = str(300 * 2**20)
    try:
        _ray("start", "--head", "--node-ip-address=127.0.0.2", f"--port={gcs}", "--num-cpus=2",
             '--resources={"learner_node": 1}', f"--object-store-memory={store}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard}", f"--ray-client-server-port={_free_port()}",
             f"--metrics-export-port={_free_port()}", f"--temp-dir={temp}", "--disable-usage-stats")
        _ray("start", f"--address=127.0.0.2:{gcs}", "--node-ip-address=127.0.0.3", "--num-cpus=2",
             '--resources={"rollout_node": 1}', f"--object-store-memory={store}",
             f"--metrics-export-port={_free_port()}", "--disable-usage-stats")
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        _ray("stop")
        shutil.rmtree(temp, ignore_errors=True)


def _finished(address: str, job: str, patience_s: float = 420) -> tuple[str, str]:
    """(status, logs) of a submitted job once it has ended."""
    deadline, status = time.time() + patience_s, ""
    while time.time() < deadline:
        status = _ray("job", "status", "--address", address, job)
        if re.search(r"\b(succeeded|failed|stopped)\b", status, re.IGNORECASE):
            break
        time.sleep(3)
    return status, _ray("job", "logs", "--address", address, job)


def test_ray_job_submit_runs_the_smoke_config_on_two_nodes(two_node_cluster, eval_file, tmp_path):
    """The README's job: `--working-dir .`, a relative --run-dir under train.run_root (a path every node shares),
    which is still there once the cluster is stopped; without a run root the relative run directory is refused."""
    overrides = ["train.iterations=2", "algo.prompts_per_iteration=2", "algo.group_size=4", "sampler.steps=4",
                 "sampler.batch_size=4", "train.eval_steps=[4]", f"train.eval_metadata={{heldout: {eval_file}}}",
                 "train.eval_at_start=false", "algo.alternate_every=1", "cluster.rollout_workers=2",
                 "cluster.rollout_cpus=0.5", "cluster.learner_cpus=0.5",
                 "cluster.rollout_resources={rollout_node: 0.01}", "cluster.learner_resources={learner_node: 0.01}"]
    command = ["python", "-m", "cogrpo.train", "--config", "configs/smoke-cpu.yaml", "--run-dir", "run"]
    for item in overrides:
        command += ["--set", item]
    lost = re.search(r"raysubmit_\w+", _submit(two_node_cluster, command)).group(0)
    status, logs = _finished(two_node_cluster, lost)  # one at a time: jobs share the unpacked working directory
    assert re.search(r"\bfailed\b", status, re.IGNORECASE), status
    assert "cogrpo: error: run directory 'run' is relative, inside this Ray job's working directory" in logs, logs
    job = re.search(r"raysubmit_\w+", _submit(two_node_cluster, [*command, "--set", f"train.run_root={tmp_path}"]))
    status, logs = _finished(two_node_cluster, job.group(0))
    assert re.search(r"\bsucceeded\b", status, re.IGNORECASE), f"{status}\n{logs[-4000:]}"
    assert '"final_eval"' in logs
    _ray("stop")  # the cluster and its sessions' working directories are gone: the run is not
    run_dir = tmp_path / "run"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["weight_version"] for r in rows] == [1, 2]
    assert (run_dir / "checkpoints" / "latest").read_text() == "iter_000002"
