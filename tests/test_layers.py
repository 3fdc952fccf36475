"""The house's layers, enforced: import-linter checks the contracts in pyproject.toml (imports point down the
layers; Ray worker code does not import the driver's loop, nor tqdm, matplotlib or prometheus_client; the simulated
family and reward import no model library)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_import_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert done.stdout.count(" KEPT") == 3, done.stdout[-2000:]
