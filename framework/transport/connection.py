"""``Connection``: one accepted or dialled socket of the TCP transport, and ``guard``, which
runs one of its tasks so that what goes wrong on the wire closes that connection only.

Rules 6 and 7 of ``framework/transport/tcp.py`` are kept here: a connection's tasks run in
its cancel scope (``close`` cancels it, and the first reason given is the one logged), and
a write cut short leaves the writer torn, never written to again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import ParamSpec, TypeVar

import anyio
import anyio.abc

from framework.transport.streams import LOST, FrameReader, FrameWriter, remote_address
from framework.transport.wire import ProtocolError

__all__ = ["Connection", "guard"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class Connection:
    """One accepted or dialled socket, with the scope that closes it and why it closed."""

    __slots__ = (
        "address",
        "ended",
        "goodbye",
        "level",
        "reader",
        "reason",
        "scope",
        "stream",
        "writer",
    )

    def __init__(self, stream: anyio.abc.ByteStream, max_frame_size: int) -> None:
        self.stream = stream
        self.address = remote_address(stream)
        self.reader = FrameReader(stream, max_frame_size)
        self.writer = FrameWriter(stream)
        self.scope = anyio.CancelScope()
        self.reason: str | None = None
        self.level = logging.INFO
        self.goodbye = False
        self.ended = anyio.Event()
        """Set once the connection is closing or closed: no write will succeed any more."""

    def close(self, reason: str, *, level: int = logging.WARNING, goodbye: bool = False) -> None:
        """Close this connection (its scope); the first reason given is the one logged."""
        if self.reason is None:
            self.reason = reason
            self.level = level
            self.goodbye = goodbye
        self.scope.cancel()
        self.ended.set()

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """Write whole frames, in order (`FrameSink`, for `LinkWrites`). A write cut short
        leaves the writer torn (rule 7): its caller closes the connection."""
        for frame in frames:
            await self.writer.send(frame)

    @property
    def writable_now(self) -> bool:
        """``write_now`` may be called (``framework.seams.ImmediateWrites``)."""
        return not self.ended.is_set() and self.writer.ready

    def write_now(self, frames: Sequence[bytes]) -> None:
        """Write whole frames at once, in order; only while ``writable_now``."""
        self.writer.write_now(frames)


async def guard(
    conn: Connection,
    func: Callable[_P, Awaitable[_R]],
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> _R | None:
    """Run one of ``conn``'s tasks; a remote fault or a dead socket closes ``conn``
    instead of escaping into the task group (a bug still escapes)."""
    try:
        return await func(*args, **kwargs)
    except ProtocolError as exc:
        conn.close(str(exc), goodbye=True)
    except anyio.EndOfStream:
        conn.close("closed by the remote end", level=logging.INFO)
    except LOST as exc:
        conn.close(f"connection lost: {exc!r}", level=logging.INFO)
    return None
