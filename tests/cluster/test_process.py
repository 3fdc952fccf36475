"""The per-process compute setup every trainer, actor and CLI command runs first."""

import subprocess
import sys

import pytest

from cogrpo.cluster.process import keep_freed_memory

ALLOC_FREE_LOOP = """
import resource, sys, torch
from cogrpo.cluster.process import configure_compute
if sys.argv[1] == "tuned":
    configure_compute(1)
torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # the first allocation faults in whichever way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # 64 MB: allocated, touched, freed, like a step's tensors
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", ALLOC_FREE_LOOP, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is a Linux matter")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    assert keep_freed_memory()
    default, tuned = page_faults("default"), page_faults("tuned")
    # default: every 64 MB block is a fresh mmap, 16k page faults each time; tuned: the heap settles within a few
    # blocks and then keeps its pages (0 faults per block from then on)
    assert default > 40 * 10_000
    assert tuned < default / 4
