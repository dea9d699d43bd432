"""Freed heap memory stays with a training process: no page faults for memory it had before."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: allocates and frees 24 blocks of 12 MiB twice; prints the page faults of the second round
SCRIPT = """
import resource, sys
import torch
from train.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def round_():
    blocks = [torch.ones(3 * 2**20) for _ in range(24)]
    del blocks
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_second_round_reuses_the_heap() -> None:
    blocks_pages = 24 * 12 * 2**20 // 4096
    default = faults("default")
    assert default > blocks_pages // 2  # glibc trims the heap and faults the blocks in again
    assert faults("keep") < default // 3
