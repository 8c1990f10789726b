"""``MemoryNetwork``: an in-process network with seeded faults, for runtime tests.

Theory of operation
-------------------
``network.transport(node_id)`` gives each node a ``MemoryTransport``; ``send`` hands each
message to the network, which decides its fate on the directed link ``src -> dst``:

1. The link must be up when the message is sent *and* when it is due: a partition, an
   isolation or a ``drop`` loses it silently, like a network would. A destination that is
   not serving (crashed, or not in the sender's address book) is reported unreachable to
   the sender, like a refused TCP connection.
2. Each link has its own ``random.Random`` seeded from ``(seed, src, dst)`` and draws the
   same four numbers for every message (drop, duplicate, two delays), so a link's fault
   decisions depend only on the seed and the messages sent on that link, never on other
   links' traffic or on which faults are configured.
3. A message whose delay is zero is delivered at once, inside ``send`` (the receiving
   ``PeerInbox.deliver`` only enqueues). A delayed one goes to the per-link delivery task,
   which runs in the *receiving* transport's ``serve`` task group: messages in flight to a
   node die with it, and there is never an unowned task. Delays drawn from a range reorder
   messages; messages due at the same time keep their sending order.
4. Time is ``anyio.current_time()``, so tests on trio can use a ``MockClock``.

``network.client(node_id)`` calls the node's ``ClientService`` directly; the call runs in
the node's task group (a node that stops mid-request loses it, and the caller gets
``ConnectionLost``). ``cut_clients`` cuts a node off from clients.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from framework.core import Message
from framework.transport.base import ClientService, PeerInbox, Transport, answer_request
from framework.transport.tcp import ConnectionLost
from framework.transport.wire import ClientRequest, ClientResponse, RequestBody

__all__ = ["LinkFaults", "MemoryClient", "MemoryNetwork", "MemoryTransport"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkFaults:
    """Faults of one directed link; ``delay`` is a ``(min, max)`` range in seconds."""

    drop: float = 0.0
    delay: tuple[float, float] = (0.0, 0.0)
    duplicate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value}: expected a probability in [0, 1]")
        low, high = self.delay
        if not 0.0 <= low <= high:
            raise ValueError(f"delay={self.delay}: expected (min, max) with 0 <= min <= max")


_NO_FAULTS = LinkFaults()


class MemoryNetwork:
    """Transports for many nodes in one process, and the faults between them."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._transports: dict[int, MemoryTransport] = {}
        self._faults: dict[tuple[int, int], LinkFaults] = {}
        self._rngs: dict[tuple[int, int], random.Random] = {}
        self._groups: tuple[frozenset[int], ...] = ()
        self._isolated: set[int] = set()
        self._clients_cut: set[int] = set()
        self.delivered = 0
        """Messages handed to a receiving inbox (a duplicate counts twice)."""
        self.dropped = 0
        """Messages lost to a drop, a partition or an isolation."""

    # -- nodes --------------------------------------------------------------------------------

    def transport(self, node_id: int) -> MemoryTransport:
        """The transport of ``node_id`` (one per node; serve it again after a restart)."""
        if node_id <= 0:
            raise ValueError(f"node_id={node_id}: expected a positive node id")
        transport = self._transports.get(node_id)
        if transport is None:
            transport = self._transports[node_id] = MemoryTransport(self, node_id)
        return transport

    def client(self, node_id: int) -> MemoryClient:
        """A client talking to ``node_id``'s ``ClientService``."""
        return MemoryClient(self, node_id)

    # -- faults -------------------------------------------------------------------------------

    def set_link(
        self,
        a: int,
        b: int,
        *,
        drop: float = 0.0,
        delay: tuple[float, float] = (0.0, 0.0),
        duplicate: float = 0.0,
        one_way: bool = False,
    ) -> None:
        """Set the faults of the link between ``a`` and ``b`` (both directions unless
        ``one_way``, then only ``a -> b``); the defaults restore a perfect link."""
        faults = LinkFaults(drop=drop, delay=delay, duplicate=duplicate)
        self._faults[(a, b)] = faults
        if not one_way:
            self._faults[(b, a)] = faults

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Replace the partition: nodes in different groups cannot talk; a node in no group
        talks to everyone (not isolated ones). Link faults stay as they are."""
        frozen = tuple(frozenset(group) for group in groups)
        seen: set[int] = set()
        for group in frozen:
            if seen & group:
                raise ValueError(
                    f"partition {[sorted(g) for g in frozen]}: node(s) "
                    f"{sorted(seen & group)} appear in two groups"
                )
            seen |= group
        self._groups = frozen

    def isolate(self, node: int) -> None:
        """Cut ``node`` off from every other node (clients are ``cut_clients``)."""
        self._isolated.add(node)

    def cut_clients(self, node_id: int, cut: bool = True) -> None:
        """Cut (or restore) the clients' access to ``node_id``."""
        if cut:
            self._clients_cut.add(node_id)
        else:
            self._clients_cut.discard(node_id)

    def heal(self) -> None:
        """Everyone reaches everyone again: partitions, isolations and client cuts go;
        per-link faults (``set_link``) stay."""
        self._groups = ()
        self._isolated.clear()
        self._clients_cut.clear()

    def connected(self, a: int, b: int) -> bool:
        """Whether ``a`` and ``b`` can talk under the current partition and isolations."""
        if a in self._isolated or b in self._isolated:
            return False
        group_a = next((g for g in self._groups if a in g), None)
        group_b = next((g for g in self._groups if b in g), None)
        return group_a is None or group_b is None or group_a is group_b

    # -- delivery -----------------------------------------------------------------------------

    def _rng(self, src: int, dst: int) -> random.Random:
        rng = self._rngs.get((src, dst))
        if rng is None:
            rng = self._rngs[(src, dst)] = random.Random(f"raftmw:{self.seed}:{src}->{dst}")
        return rng

    def _send(self, sender: MemoryTransport, messages: Sequence[Message]) -> None:
        state = sender._state
        if state is None:
            return
        src = sender.node_id
        now = anyio.current_time()
        immediate: dict[int, list[Message]] = {}
        unreachable: dict[int, None] = {}
        for msg in messages:
            dst = msg.dst
            target = self._transports.get(dst)
            target_state = target._state if target is not None else None
            if target_state is None or (sender._peers is not None and dst not in sender._peers):
                unreachable[dst] = None
                continue
            if not self.connected(src, dst):
                self.dropped += 1
                continue
            faults = self._faults.get((src, dst), _NO_FAULTS)
            rng = self._rng(src, dst)
            drop_roll, duplicate_roll = rng.random(), rng.random()
            delay_rolls = (rng.random(), rng.random())
            if drop_roll < faults.drop:
                self.dropped += 1
                continue
            copies = 2 if duplicate_roll < faults.duplicate else 1
            low, high = faults.delay
            for roll in delay_rolls[:copies]:
                delay = low + (high - low) * roll
                if delay <= 0.0:
                    immediate.setdefault(dst, []).append(msg)
                else:
                    target_state.schedule(self, src, dst, now + delay, msg)
        for dst, batch in immediate.items():
            target = self._transports[dst]
            assert target._state is not None
            self.delivered += len(batch)
            target._state.inbox.deliver(batch)
        for dst in unreachable:
            state.inbox.peer_unreachable(dst)


class _InFlight:
    """Messages on one directed link waiting for their delivery time."""

    __slots__ = ("heap", "seq", "wakeup")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Message]] = []
        self.seq = 0
        self.wakeup = anyio.Event()


class _Serving:
    __slots__ = ("clients", "in_flight", "inbox", "tg")

    def __init__(self, tg: anyio.abc.TaskGroup, inbox: PeerInbox, clients: ClientService) -> None:
        self.tg = tg
        self.inbox = inbox
        self.clients = clients
        self.in_flight: dict[int, _InFlight] = {}

    def schedule(
        self, network: MemoryNetwork, src: int, dst: int, due: float, msg: Message
    ) -> None:
        link = self.in_flight.get(src)
        if link is None:
            link = self.in_flight[src] = _InFlight()
            self.tg.start_soon(self._deliver_due, network, src, dst, link)
        link.seq += 1
        heapq.heappush(link.heap, (due, link.seq, msg))
        link.wakeup.set()

    async def _deliver_due(
        self, network: MemoryNetwork, src: int, dst: int, link: _InFlight
    ) -> None:
        heap = link.heap
        while True:
            now = anyio.current_time()
            due: list[Message] = []
            while heap and heap[0][0] <= now:
                due.append(heapq.heappop(heap)[2])
            if due:
                if network.connected(src, dst):
                    network.delivered += len(due)
                    self.inbox.deliver(due)
                else:
                    network.dropped += len(due)
                continue
            wakeup = link.wakeup = anyio.Event()
            with anyio.move_on_after(heap[0][0] - now if heap else math.inf):
                await wakeup.wait()


class MemoryTransport:
    """A node's ``Transport`` on a ``MemoryNetwork``; reached at ``mem://<node_id>``."""

    def __init__(self, network: MemoryNetwork, node_id: int) -> None:
        self.network = network
        self.node_id = node_id
        self._state: _Serving | None = None
        self._peers: frozenset[int] | None = None

    @property
    def listen_address(self) -> str:
        return f"mem://{self.node_id}"

    @property
    def serving(self) -> bool:
        return self._state is not None

    async def serve(
        self,
        inbox: PeerInbox,
        clients: ClientService,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        if self._state is not None:
            raise RuntimeError(f"MemoryTransport of node {self.node_id} is already serving")
        async with anyio.create_task_group() as tg:
            self._state = _Serving(tg, inbox, clients)
            try:
                task_status.started()
                await anyio.sleep_forever()
            finally:
                self._state = None

    def send(self, messages: Sequence[Message]) -> None:
        self.network._send(self, messages)

    def set_peers(self, addresses: Mapping[int, str]) -> None:
        """Restrict sending to these nodes. Until the first call every node on the network
        is a peer, so a test need not build an address book."""
        self._peers = frozenset(addresses)


class _Call:
    __slots__ = ("done", "response")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.response: ClientResponse | None = None


class MemoryClient:
    """``request(body)`` against one node's ``ClientService``, like a client connection."""

    def __init__(self, network: MemoryNetwork, node_id: int) -> None:
        self.network = network
        self.node_id = node_id
        self.address = f"mem://{node_id}"
        self._next_id = 1

    async def request(
        self, body: RequestBody, *, timeout: float | None = None, deadline: float | None = None
    ) -> ClientResponse:
        """Answer ``body``; raises ``ConnectionLost`` if the node is not serving, clients are
        cut off from it, or it stops (or is cut off) before answering, and ``TimeoutError``
        if ``timeout`` seconds pass first."""
        state = self._reachable()
        request = ClientRequest(id=self._next_id, body=body)
        self._next_id += 1
        call = _Call()
        state.tg.start_soon(self._run, state, request, call)
        if deadline is not None:
            timeout = deadline - anyio.current_time()
        with anyio.move_on_after(timeout):
            await call.done.wait()
        if not call.done.is_set():
            raise TimeoutError(f"no answer from {self.address} in time")
        if call.response is None:
            raise ConnectionLost(self.address, f"node {self.node_id} stopped before answering")
        self._reachable()  # the answer is lost if clients were cut off meanwhile
        return call.response

    def _reachable(self) -> _Serving:
        transport = self.network._transports.get(self.node_id)
        state = transport._state if transport is not None else None
        if state is None:
            raise ConnectionLost(self.address, f"node {self.node_id} is not serving")
        if self.node_id in self.network._clients_cut:
            raise ConnectionLost(self.address, f"clients are cut off from node {self.node_id}")
        return state

    @staticmethod
    async def _run(state: _Serving, request: ClientRequest, call: _Call) -> None:
        try:
            call.response = await answer_request(state.clients, request)
        finally:
            call.done.set()


if TYPE_CHECKING:  # mypy checks that MemoryTransport satisfies the protocol
    _: Transport = MemoryNetwork(seed=0).transport(1)
