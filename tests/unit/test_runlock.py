"""The directory lock: a second holder is refused with the holder's name; a killed holder
leaves nothing stuck."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train.errors import BlockmixError
from train.runlock import LOCK_FILE, acquire, hold_run


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    lock = acquire(tmp_path / "run", "run.dir")
    with pytest.raises(BlockmixError, match=rf"run.dir .* is in use by pid {os.getpid()} on "):
        hold_run(tmp_path / "run", is_main=True)
    lock.release()
    hold_run(tmp_path / "run", is_main=True).release()
    assert hold_run(tmp_path / "run", is_main=False)  # other ranks hold nothing


def test_a_killed_holder_leaves_no_stuck_lock(tmp_path: Path) -> None:
    code = (
        "import sys, time; from train.runlock import acquire; "
        "lock = acquire(sys.argv[1], 'run.dir'); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BlockmixError, match=f"pid {holder.pid}"):
            acquire(tmp_path, "sweep directory")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            acquire(tmp_path, "sweep directory").release()
            break
        except BlockmixError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert (tmp_path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
