"""The faults themselves: configuration, the per-node switch, and the two wrappers.

``ChaosStore.save_ready`` sleeps ``persist_latency`` before storing: it runs in the node's
storage worker thread (never on the event loop), so the node's Ready loop waits exactly as
it would for a slow disk. ``ChaosTransport.send`` drops messages to ``drop_to`` peers and
hands the rest to a task that sends them ``send_latency`` later, in order (a bounded
stream: beyond ``max_delayed`` batches waiting, a batch is dropped as a full link would
drop it, and Raft retransmits). Both read the switch at every call, so turning the flag
off stops the faults at once (messages already delayed still leave late).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup, TaskStatus

from framework.config import SettingsError, parse_duration
from framework.transport.snapshot_stream import hand_over

__all__ = ["SEAMS", "ChaosConfig", "ChaosFault", "ChaosStore", "ChaosSwitch", "ChaosTransport"]

SEAMS: Final = ("status_store", "queue", "timeouts", "send_guard", "metrics", "connection_pool")
_KEYS: Final = (
    "send_latency",
    "send_jitter",
    "persist_latency",
    "drop_to",
    "delay_to",
    "isolate",
    "fail",
    "max_delayed",
)
_MAX_LATENCY: Final = 10.0


class ChaosFault(RuntimeError):
    """A component that ``[plugin.chaos] fail`` names was asked for while chaos is on."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosConfig:
    send_latency: float = 0.0
    """Seconds added to every peer send (to ``delay_to`` peers only, if given)."""
    send_jitter: float = 0.0
    """Up to this many more seconds, uniformly drawn per batch, on top of ``send_latency``."""
    persist_latency: float = 0.0
    """Seconds added to every log write."""
    drop_to: frozenset[int] = frozenset()
    """Peers whose messages are dropped."""
    delay_to: frozenset[int] = frozenset()
    """Peers ``send_latency`` applies to (empty: all)."""
    isolate: bool = False
    """Drop every peer message sent or received (a partition of this node)."""
    fail: frozenset[str] = frozenset()
    """Seams whose component fails to build (a swap to it is aborted)."""
    max_delayed: int = 10_000

    @property
    def wraps_transport(self) -> bool:
        return bool(self.send_latency or self.send_jitter or self.drop_to or self.isolate)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> ChaosConfig:
        """``[plugin.chaos]``; `SettingsError` naming the key, the value and what was
        expected."""
        for key in table:
            if key not in _KEYS:
                raise SettingsError(
                    f"plugin.chaos.{key}", "is not a chaos setting", f"one of {', '.join(_KEYS)}"
                )
        latencies = {}
        for key in ("send_latency", "send_jitter", "persist_latency"):
            raw = table.get(key, "0ms")
            seconds = parse_duration(raw, key=f"plugin.chaos.{key}")
            if not 0 <= seconds <= _MAX_LATENCY:
                raise SettingsError(
                    f"plugin.chaos.{key}",
                    "is out of range",
                    f"a duration from 0 to {_MAX_LATENCY:g}s",
                    value=raw,
                )
            latencies[key] = seconds
        peers = {}
        for key in ("drop_to", "delay_to"):
            raw = table.get(key, [])
            if (
                not isinstance(raw, list | tuple)  # settings freeze lists into tuples
                or len(raw) > 1000
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in raw)
            ):
                raise SettingsError(
                    f"plugin.chaos.{key}", "is not a list of node ids", "like [2, 3]", value=raw
                )
            peers[key] = frozenset(raw)
        isolate = table.get("isolate", False)
        if not isinstance(isolate, bool):
            raise SettingsError(
                "plugin.chaos.isolate", "is not a boolean", "true or false", value=isolate
            )
        fail = table.get("fail", [])
        if not isinstance(fail, list | tuple) or not all(s in SEAMS for s in fail):
            raise SettingsError(
                "plugin.chaos.fail",
                "is not a list of seams",
                f"names among {', '.join(SEAMS)}",
                value=fail,
            )
        max_delayed = table.get("max_delayed", 10_000)
        if (
            not isinstance(max_delayed, int)
            or isinstance(max_delayed, bool)
            or not (1 <= max_delayed <= 1_000_000)
        ):
            raise SettingsError(
                "plugin.chaos.max_delayed",
                "is out of range",
                "an integer 1..1000000",
                value=max_delayed,
            )
        return cls(
            send_latency=latencies["send_latency"],
            send_jitter=latencies["send_jitter"],
            persist_latency=latencies["persist_latency"],
            drop_to=peers["drop_to"],
            delay_to=peers["delay_to"],
            isolate=isolate,
            fail=frozenset(fail),
            max_delayed=max_delayed,
        )


class ChaosSwitch:
    """Whether chaos is on, per node (told by ``raftmw_on_flag_change``), and the faults."""

    def __init__(self, config: ChaosConfig | None = None) -> None:
        self.config = config or ChaosConfig()
        self._on: dict[int, bool] = {}

    def set(self, node_id: int, on: bool) -> None:
        self._on[node_id] = on

    def on(self, node_id: int) -> bool:
        return self._on.get(node_id, False)


class ChaosStore:
    """A ``LogStore`` that is slow to persist while chaos is on (everything else delegated)."""

    def __init__(self, inner: Any, node_id: int, switch: ChaosSwitch) -> None:
        self.inner = inner
        self.node_id = node_id
        self.switch = switch

    def save_ready(self, **kwargs: Any) -> Any:
        latency = self.switch.config.persist_latency
        if latency and self.switch.on(self.node_id):
            time.sleep(latency)  # the storage worker thread, like a slow fsync
        return self.inner.save_ready(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class ChaosTransport:
    """A ``Transport`` that drops and delays peer sends while chaos is on."""

    def __init__(self, inner: Any, node_id: int, switch: ChaosSwitch) -> None:
        self.inner = inner
        self.node_id = node_id
        self.switch = switch
        self.dropped = 0
        self._later: Any = None
        self._tg: TaskGroup | None = None
        self._jitter = random.Random(node_id)

    async def serve(self, inbox: Any, clients: Any, *, task_status: TaskStatus[None]) -> None:
        send, receive = anyio.create_memory_object_stream[tuple[float, list[Any]]](
            max_buffer_size=self.switch.config.max_delayed
        )
        async with send, receive, anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._send_later, receive)
            await tg.start(self.inner.serve, _IsolatingInbox(inbox, self), clients)
            self._later = send
            task_status.started()

    def send(self, messages: Sequence[Any]) -> None:
        if not self.switch.on(self.node_id):
            self.inner.send(messages)
            return
        config = self.switch.config
        if config.isolate:
            self.dropped += len(messages)
            return
        kept = [m for m in messages if m.dst not in config.drop_to]
        self.dropped += len(messages) - len(kept)
        if not (config.send_latency or config.send_jitter):
            if kept:
                self.inner.send(kept)
            return
        now_list = [m for m in kept if config.delay_to and m.dst not in config.delay_to]
        later = [m for m in kept if not (config.delay_to and m.dst not in config.delay_to)]
        if now_list:
            self.inner.send(now_list)
        if later:
            try:
                delay = config.send_latency + self._jitter.uniform(0.0, config.send_jitter)
                self._later.send_nowait((anyio.current_time() + delay, later))
            except (anyio.WouldBlock, AttributeError, anyio.ClosedResourceError):
                self.dropped += len(later)

    async def _send_later(self, receive: Any) -> None:
        async for due, messages in receive:
            wait = due - anyio.current_time()
            if wait > 0 and math.isfinite(wait):
                await anyio.sleep(wait)
            self.inner.send(messages)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _IsolatingInbox:
    """The node's peer inbox, dropping everything received while ``isolate`` is on: the
    messages and the snapshots streamed on a connection of their own (a dropped snapshot's
    file is deleted off the event loop; the sender retries it as after a lost one)."""

    def __init__(self, inner: Any, transport: ChaosTransport) -> None:
        self.inner = inner
        self.transport = transport

    def deliver(self, messages: Sequence[Any]) -> None:
        t = self.transport
        if t.switch.config.isolate and t.switch.on(t.node_id):
            t.dropped += len(messages)
            return
        self.inner.deliver(messages)

    def deliver_snapshot(self, received: Any) -> None:
        t = self.transport
        if t.switch.config.isolate and t.switch.on(t.node_id):
            t.dropped += 1
            if t._tg is None:
                _unlink(received.path)
            else:
                t._tg.start_soon(anyio.to_thread.run_sync, _unlink, received.path)
            return
        deliver_file = getattr(self.inner, "deliver_snapshot", None)
        if deliver_file is not None:
            deliver_file(received)
        elif t._tg is not None:  # an inbox that takes snapshots only as messages
            t._tg.start_soon(hand_over, self.inner, received)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
