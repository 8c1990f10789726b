"""``FrameWriter`` writes a frame at once when no other write holds the stream: it does not
first yield to every task that is ready to run (under load that queued each frame, a
client's answer or a peer's append, behind the whole event loop; issue #15)."""

from __future__ import annotations

import anyio
import pytest
from anyio.lowlevel import checkpoint

from framework.transport.streams import FrameWriter, Outbox, PassLatch

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


class ImmediateStream(RecordingStream):
    """A stream that takes bytes at once (``ProtocolStream``'s rule 6), or holds them back
    (``writable_now`` False) as a full socket does."""

    writable_now = True

    def write_now(self, item: bytes) -> None:
        self.order.append(f"now {item.decode()}")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_pass_latch_says_yes_once_per_pass_of_the_event_loop() -> None:
    latch = PassLatch()
    assert latch.take()
    assert not latch.take() and not latch.take()
    await checkpoint()  # the pass ended
    assert latch.take()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_off_asyncio_nothing_is_written_at_once() -> None:
    assert not PassLatch().take()
    order: list[str] = []
    outbox = Outbox()
    assert outbox.send(b"a", FrameWriter(ImmediateStream(order)))  # type: ignore[arg-type]
    assert order == [] and await outbox.take() == b"a"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_outbox_writes_the_first_frame_of_a_pass_at_once_and_queues_the_rest() -> None:
    order: list[str] = []
    stream = ImmediateStream(order)
    writer = FrameWriter(stream)  # type: ignore[arg-type]
    outbox = Outbox()
    assert outbox.send(b"a", writer) and outbox.send(b"b", writer) and outbox.send(b"c", writer)
    assert order == ["now a"] and outbox.at_once == 1
    assert await outbox.take() == b"bc"  # the writer's one write for the rest of the pass
    await checkpoint()
    stream.writable_now = False  # the socket holds bytes back: queued, in order
    assert outbox.send(b"d", writer)
    stream.writable_now = True
    assert outbox.send(b"e", writer)  # the next pass, but "d" still waits: queued behind it
    assert order == ["now a"] and await outbox.take() == b"de"
    await checkpoint()
    outbox.close()
    assert not outbox.send(b"f", writer) and order == ["now a"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_nothing_is_written_at_once_while_a_send_is_under_way() -> None:
    order: list[str] = []

    class HeldStream(ImmediateStream):
        async def send(self, item: bytes) -> None:
            self.order.append(f"start {item.decode()}")
            await release.wait()
            self.order.append(f"end {item.decode()}")

    release = anyio.Event()
    writer = FrameWriter(HeldStream(order))  # type: ignore[arg-type]
    outbox = Outbox()
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.send, b"a")
        await checkpoint()
        assert not writer.ready
        assert outbox.send(b"b", writer) and order == ["start a"]
        with pytest.raises(anyio.BusyResourceError):
            writer.write_now([b"x"])
        release.set()
    assert writer.ready and await outbox.take() == b"b"
    assert order == ["start a", "end a"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_after_a_burst_an_outbox_leaves_the_next_pass_to_its_writer() -> None:
    """A pass that sent several frames (a connection under load) makes the next pass's
    first frame wait for the writer, which takes the pass's frames in one write; a pass
    of one frame (one writer at a time) makes the next one at once again."""
    order: list[str] = []
    writer = FrameWriter(ImmediateStream(order))  # type: ignore[arg-type]
    outbox = Outbox()
    for frame in (b"a", b"b", b"c"):
        outbox.send(frame, writer)
    assert order == ["now a"] and await outbox.take() == b"bc"
    await checkpoint()  # the pass of three ended: a burst
    outbox.send(b"d", writer)
    outbox.send(b"e", writer)
    assert order == ["now a"] and await outbox.take() == b"de"
    await checkpoint()  # still a burst (two)
    outbox.send(b"f", writer)
    assert order == ["now a"] and await outbox.take() == b"f"
    await checkpoint()  # a pass of one frame
    outbox.send(b"g", writer)
    assert order == ["now a", "now g"] and outbox.at_once == 2
    await checkpoint()
    outbox.send(b"h", writer)
    assert order == ["now a", "now g", "now h"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_latch_without_bursts_says_yes_after_a_busy_pass_too() -> None:
    latch = PassLatch()
    assert latch.take() and not latch.take() and not latch.take()
    await checkpoint()
    assert latch.take()
