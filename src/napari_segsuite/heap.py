"""The C heap under torch's and numpy's large arrays (Linux with glibc; nothing elsewhere).

glibc serves an allocation above its mmap threshold (at most 32 MiB, by default) with fresh pages from
the kernel and returns them when the array is freed, and it returns the top of its heap to the kernel
whenever that is more than 128 KiB free. A network's activations (32 channels of a 512 x 512 tile are
32 MiB) are allocated and freed at every layer, so each layer pays a page fault for every 4 KiB it
writes. On this project's 2-core machine that made a UNet's forward pass on four 512-pixel tiles 1.6x
slower, and ISBI training 1.5x slower (166 steps in 120 s against 248), than with the freed pages kept
for reuse. :func:`reuse_freed_memory` keeps them; :func:`trim_heap` gives free pages back where memory
must not grow (between the blocks of a large image, at the end of a run).
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

#: glibc's ``mallopt`` parameters.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
#: Allocations up to this size come from the heap, and this much free heap is kept before it shrinks.
KEEP = 1 << 30

_LIBC: Any = None
_REUSING: bool | None = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        try:
            libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
            _LIBC = libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else False
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


def reuse_freed_memory() -> bool:
    """Keep freed large arrays' pages in the process for the next ones (once per process; every run
    starts here, through :func:`~.inference.pick_device`). Off where the user set glibc's allocator
    through its environment variables or ``SEGSUITE_MALLOC=system``; returns whether it is on."""
    global _REUSING
    if _REUSING is None:
        libc = _libc()
        # the user's own settings of glibc's allocator (any ``MALLOC_*`` variable, ``GLIBC_TUNABLES``) stand
        user = any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ)
        user = user or os.environ.get("SEGSUITE_MALLOC") == "system"
        _REUSING = bool(libc) and not user and bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP))
        if _REUSING:
            libc.mallopt(M_TRIM_THRESHOLD, KEEP)
            # threads share the main heap: another thread's heap (at most 64 MiB in glibc) cannot hold a
            # large array, which then takes fresh pages again (a UNet's forward pass in a thread, as the
            # widgets run it: 0.60 Mpx/s as glibc comes, 0.67 with the thresholds alone, 0.93 with this)
            libc.mallopt(M_ARENA_MAX, 1)
    return _REUSING


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    Block after block, the maps a :class:`~.tiling.TileCache` keeps sit between the blocks' short-lived
    arrays and leave the heap's free pages scattered; resident memory then grows with the image (issue 15).
    """
    libc = _libc()
    if libc:
        libc.malloc_trim(0)
