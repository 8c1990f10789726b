"""Durable file operations shared by the stores and the node's own small files.

A write, rename or unlink survives a power loss only once the file *and* its directory are
fsynced (POSIX); these helpers do both, in one place.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["fsync_directory", "remove_durably", "replace_durably"]


def fsync_directory(directory: Path) -> None:
    """Make a rename, a new file or a removal in ``directory`` durable (a no-op on
    Windows, which has no directory fsync)."""
    if sys.platform == "win32":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: a temporary file beside it, fsynced,
    renamed over it, then the directory fsynced. A crash leaves the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


def remove_durably(path: Path) -> None:
    """Remove ``path`` if it exists, durably."""
    if path.exists():
        path.unlink()
        fsync_directory(path.parent)
