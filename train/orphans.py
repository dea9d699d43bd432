"""Local ranks that die with their launcher: a child asks the kernel for SIGTERM when its parent
dies (Linux ``prctl(PR_SET_PDEATHSIG)``), so a killed launcher leaves no rank training.

SIGTERM, not SIGKILL: a training rank that receives it saves a checkpoint at the next step
boundary and stops, as on preemption.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """In a freshly forked child (``Popen(preexec_fn=...)``): get SIGTERM when the parent dies,
    and at once if it already has. A no-op where ``prctl`` does not exist."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "prctl") or libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0):
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
