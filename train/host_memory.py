"""Host memory of a training process: keep freed heap memory instead of returning it every step.

glibc's malloc adapts its thresholds to the sizes freed; with a template variant's step (a few
tens of MB of mixed weights and their gradients besides the activations) it ends up trimming the
heap after every backward and page-faulting all activations back in during the next forward:
~10% more CPU time per step on the isometric network, none of it arithmetic. Fixed thresholds
(blocks up to 32 MiB from the heap, never trimmed) keep a training process at its peak heap
instead, as the CUDA caching allocator does on a GPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest (64-bit): bigger blocks are mapped and unmapped
NO_TRIM = -1


def keep_freed_memory() -> bool:
    """Fix glibc's malloc thresholds for training; False where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, NO_TRIM)
    )
