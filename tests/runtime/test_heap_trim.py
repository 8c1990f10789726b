"""``trim_free_heap`` gives freed C-heap pages back to the OS (issue #15: a node calls it
once it serves, to drop what start-up freed from its idle RSS)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"

# In a fresh interpreter: 48 MiB of 2,000-byte buffers (above pymalloc's 512 bytes, so
# glibc's heap holds them), one kept at the top so that free() cannot shrink the heap from
# its end, the rest freed. Without a trim, the freed pages stay resident.
_PROGRAM = """
from framework.runtime.heap_trim import trim_free_heap

def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

buffers = [bytearray(2000) for _ in range(48 * 1024 * 1024 // 2000)]
top = bytearray(2000)
del buffers
before = rss_kib()
assert trim_free_heap()
print(before, rss_kib(), top[:0])
"""


@pytest.mark.skipif(not _GLIBC, reason="malloc_trim is glibc's")
def test_freed_heap_pages_leave_the_resident_set() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM], capture_output=True, text=True, timeout=60, check=True
    )
    before, after = (int(v) for v in done.stdout.split()[:2])
    assert before - after > 32 * 1024, f"RSS {before} KiB before the trim, {after} KiB after"
