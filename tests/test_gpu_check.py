"""benchmarks/gpu_check.sh in its CPU mode, shrunk (GPU_CHECK_QUICK=1): every CPU twin runs and passes, the summary
says plainly what was skipped for want of a GPU, and the exit code is 0. Its GPU side cannot run here."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def summary(stdout: str) -> dict[str, list[str]]:
    """The summary table's rows: check -> [result, number, verdict]."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in stdout.splitlines()
            if line.startswith("| ")]
    assert rows[0] == ["check", "result", "number", "verdict"]
    return {row[0]: row[1:] for row in rows[1:]}


def test_the_cpu_mode_runs_every_twin_and_says_what_it_skipped():
    env = {**os.environ, "GPU_CHECK_QUICK": "1", "GPU_CHECK_DEVICE": "cpu"}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "no GPU, so the CPU twins at small sizes ran" in done.stdout and "all checks passed" in done.stdout
    rows = summary(done.stdout)
    assert rows["CUDA-only tests (pytest -m cuda)"] == ["not run: no GPU", "-", "SKIP"]
    assert rows["weight sync, NCCL at ~1B, vs device copy"] == ["not run: no GPU", "-", "SKIP"]
    assert rows["tiny aMUSEd fp32 on CPU (twin): sample + update"][1:] == ["1/1", "PASS"]
    assert rows["configs/smoke-cpu.yaml, 2 iterations on Ray"] == ["exit 0, weight versions: 1 2", "version 1 -> 2",
                                                                   "PASS"]
    sync = rows["weight sync, gloo (twin), vs memory copy"]
    assert "float32" in sync[0] and sync[1].startswith("ratio ") and sync[2] == "PASS"
    sampler = rows["sampler on CPU (twin), batch 8 x 4 steps"]
    assert float(sampler[1].removeprefix("ratio ")) <= 1.5 and sampler[2] == "PASS"
    assert len(rows) == 6
