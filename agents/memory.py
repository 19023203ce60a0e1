"""Process-level memory settings for long-running workers (glibc malloc on Linux; a no-op elsewhere).

The engine's own structures are bounded (docs/operations.md, "Memory"), but a process's RSS also follows the
allocator: with glibc's default *dynamic* mmap threshold, freeing one large block (a batch's feature matrix)
raises the threshold to that size, so later large blocks come from the heap, and heap memory freed in the middle
is not returned to the system. A worker that once processed a large catch-up batch would keep that peak
for good. Two measures:

- ``fix_mmap_threshold``: blocks of 128 KiB and more are always mmapped (and unmapped when freed), the
  threshold no longer moves;
- ``trim``: ``malloc_trim(0)`` hands free heap pages back (called from the worker's periodic housekeeping).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - glibc only (musl has no mallopt / malloc_trim)
        libc.malloc_trim  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Pin glibc's mmap threshold (see the module docstring); False where there is no glibc."""
    if _LIBC is None:
        return False
    ok = bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, threshold))
    log.debug("malloc mmap threshold pinned at %d bytes: %s", threshold, ok)
    return ok


def trim() -> bool:
    """Return free heap memory to the system; True if some was released."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False
