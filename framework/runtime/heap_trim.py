"""Give the C heap's free pages back to the operating system once a node has started.

Why (issue #15, idle RSS per node): start-up frees much of what it allocates (discovering
plugins by entry point, loading the store, building the TLS contexts), and glibc's
``malloc`` keeps freed memory in its heap for reuse. It returns memory on its own only from
the top of the heap, and raises that threshold after any large short-lived allocation, so
the holes start-up leaves stay resident: about 1.5 MiB of an idle node measured on Linux
(``/proc/PID/smaps``: ``[heap]`` 11.0 -> 9.5 MiB after ``malloc_trim(0)``), when a node
still read its settings through dynaconf in its own process (now a forked child does:
framework/settings_apart.py). ``malloc_trim(0)`` releases every free page of every arena,
not just the top, and changes nothing the process can observe: the pages are mapped again,
zeroed, if a later allocation needs them.

Where the C library has no ``malloc_trim`` (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

__all__ = ["trim_free_heap"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # the C library the interpreter runs on
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]  # a ctypes function, typed above


def trim_free_heap() -> bool:
    """Return the C heap's free pages to the OS; False where the C library cannot.

    It walks the allocator's free lists (about a millisecond for a node's heap): call it
    from a worker thread, not on the event loop.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)  # 0: keep no padding at the top of the heap
    return True
