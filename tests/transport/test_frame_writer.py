"""``FrameWriter`` writes a frame at once when no other write holds the stream: it does not
first yield to every task that is ready to run (under load that queued each frame, a
client's answer or a peer's append, behind the whole event loop; issue #15)."""

from __future__ import annotations

import anyio
import pytest

from framework.transport.streams import FrameWriter

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class RecordingStream:
    def __init__(self, order: list[str]) -> None:
        self.order = order

    async def send(self, item: bytes) -> None:
        self.order.append(f"write {item.decode()}")


async def test_a_frame_leaves_before_other_ready_tasks_run() -> None:
    order: list[str] = []
    writer = FrameWriter(RecordingStream(order))  # type: ignore[arg-type]

    async def other() -> None:
        order.append("other task")

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)  # ready to run, not yet run
        await writer.send(b"frame")
    assert order == ["write frame", "other task"]


async def test_writes_from_two_tasks_still_take_turns() -> None:
    order: list[str] = []

    class SlowStream(RecordingStream):
        async def send(self, item: bytes) -> None:
            self.order.append(f"start {item.decode()}")
            await anyio.sleep(0.01)  # another writer arrives meanwhile and must wait
            self.order.append(f"end {item.decode()}")

    writer = FrameWriter(SlowStream(order))  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.send, b"a")
        await anyio.sleep(0.001)
        tg.start_soon(writer.send, b"b")
    assert order == ["start a", "end a", "start b", "end b"]
