"""`launch_local`'s ranks die with their launcher, even when it is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = (
        Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}").exists() else "X"
    )
    return state not in ("Z", "X")


def test_ranks_die_with_a_killed_launcher(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    rank = tmp_path / "rank.sh"  # stands in for `python -m train ...`: records itself, waits
    rank.write_text(f"#!/bin/sh\necho $$ >> {pids}\nexec sleep 120\n")
    rank.chmod(0o755)
    code = (
        "import sys; from train import distributed; "
        f"sys.executable = {str(rank)!r}; distributed.launch_local(2, ['train'])"
    )
    launcher = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not (pids.exists() and len(pids.read_text().split()) == 2):
            assert time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.1)
        ranks = [int(pid) for pid in pids.read_text().split()]
        assert all(alive(pid) for pid in ranks)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in ranks):
            assert time.monotonic() < deadline, "ranks outlived their launcher"
            time.sleep(0.1)
    finally:
        launcher.kill()
        for pid in [int(p) for p in pids.read_text().split()] if pids.exists() else []:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
