"""``DialledConnection``: a pool's handle on a peer connection ``TcpTransport`` dialled.

The transport dials, shakes hands and reads (``tcp`` rules 2 and 6); the pool that asked
for the connection writes to it and closes it, through this handle
(``framework.seams.PeerConnection``, and ``ImmediateWrites`` for a write at once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import anyio

from framework.transport.connection import Connection
from framework.transport.streams import LOST, ConnectionLost

__all__ = ["DialledConnection"]


class DialledConnection:
    """`PeerConnection`: the pool's handle on a connection ``TcpTransport`` dialled for it.

    The pool writes (``send_frames``) and closes (``aclose``); the transport's reader task
    reads, and releases the socket when the connection ends, however it ends.
    """

    __slots__ = ("address", "closing", "conn", "count_frames", "released")

    def __init__(self, conn: Connection, address: str, count_frames: Callable[[int], None]) -> None:
        self.conn = conn
        self.count_frames = count_frames
        """Told how many frames each write wrote (the transport's ``frames_sent``)."""
        self.address = address
        self.closing = False
        """Set by ``aclose``: the pool let it go, which is not a failure to report."""
        self.released = anyio.Event()
        """Set by the reader task once the socket is closed."""

    @property
    def closed(self) -> bool:
        return self.conn.ended.is_set()

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        conn = self.conn
        if conn.ended.is_set():
            raise ConnectionLost(self.address, conn.reason or "closed")
        try:
            for frame in frames:
                await conn.writer.send(frame)
                self.count_frames(1)
        except LOST as exc:
            conn.close(f"connection lost: {exc!r}", level=logging.INFO)
            raise ConnectionLost(self.address, conn.reason or repr(exc)) from exc
        finally:
            if conn.writer.torn:  # cancelled mid-frame (its pool is stopping): rule 7
                self.closing = True
                conn.close("a write was cut short", level=logging.INFO)

    @property
    def writable_now(self) -> bool:
        return self.conn.writable_now

    def write_now(self, frames: Sequence[bytes]) -> None:
        self.conn.write_now(frames)
        self.count_frames(len(frames))

    async def wait_closed(self) -> None:
        await self.conn.ended.wait()

    async def aclose(self) -> None:
        self.closing = True
        self.conn.close("closed by its connection pool", level=logging.DEBUG)
        with anyio.CancelScope(shield=True):
            await self.released.wait()
