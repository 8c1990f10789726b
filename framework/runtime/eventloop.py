"""The event loop every raftmw command runs on: asyncio, with uvloop where it is installed.

Everything is written against anyio, so tests may also run the runtime on trio; this is
only the choice made for processes the ``raftmw`` command starts (nodes, load generators).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, TypeVarTuple, Unpack

import anyio

__all__ = ["run_async"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def run_async(fn: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
    """``anyio.run(fn, *args)`` on asyncio, with uvloop when it is installed."""
    try:
        import uvloop  # noqa: F401  (only probing for it)
    except ImportError:
        return anyio.run(fn, *args, backend="asyncio")
    return anyio.run(fn, *args, backend="asyncio", backend_options={"use_uvloop": True})
