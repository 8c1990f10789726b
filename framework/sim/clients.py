"""The simulated clients: a KV workload with ``(client_id, seq)`` de-duplication.

Each client runs one operation at a time (get, put, append, cas, delete on a few keys),
sent to the leader it last heard of, or, with ``random_reads``, to a random node or to any
node that believes it leads. A get goes through ReadIndex most of the time, else through the
log. An operation is retried with a new attempt number when it times out, when the node
says it is not the leader or is overloaded, and when the leader that took it loses its
leadership; an answer to an earlier attempt is ignored. What the clients saw, call and
return on one logical clock, is the ``history`` the linearizability check judges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from framework.core import NotLeader, ProposalRejected, Role
from framework.sim.linearizability import Operation
from framework.statemachine import Append, Cas, Delete, Get, Put, Request, encode_request

if TYPE_CHECKING:
    from framework.sim.simulator import Simulation

__all__ = ["ClientOp", "SimClient", "Workload"]


@dataclass(slots=True)
class ClientOp:
    """One operation of a client, retried (new ``attempt``) until it completes."""

    kind: str
    key: str
    value: str | None
    expected: str | None
    seq: int
    call: int
    attempt: int = 0
    deadline: int = 0
    retry_at: int = 0
    via_read_index: bool = False


@dataclass(slots=True)
class SimClient:
    """A client: one operation at a time, sent to the leader it last heard of."""

    id: int
    seq: int = 0
    leader_guess: int = 0
    op: ClientOp | None = None
    idle_until: int = 0


class Workload:
    """The clients of one run and the history they observed."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.options = sim.options
        self.rng = sim.rng
        self.nodes = sim.nodes
        self.result = sim.result
        self.clients = [SimClient(id=100 + i) for i in range(sim.options.clients)]
        self.history: list[Operation] = []
        self.clock = 0
        """The logical clock of calls and returns."""
        self.attempts = 0

    def client(self, client_id: int) -> SimClient:
        return self.clients[client_id - 100]

    def complete(self, client_id: int, attempt: int, result: object) -> None:
        client = self.client(client_id)
        op = client.op
        if op is None or op.attempt != attempt:
            return  # an answer to an attempt the client already gave up on
        self.clock += 1
        self.history.append(
            Operation(
                client_id=client_id,
                kind=op.kind,
                key=op.key,
                value=op.value,
                expected=op.expected,
                call=op.call,
                ret=self.clock,
                result=result,
            )
        )
        self.result.completed += 1
        client.op = None
        client.idle_until = self.sim.now + self.rng.randint(0, 3)

    def retry_soon(self, client_id: int, attempt: int) -> None:
        client = self.client(client_id)
        if client.op is not None and client.op.attempt == attempt:
            client.op.retry_at = self.sim.now + 1
            client.leader_guess = 0

    def run(self) -> None:
        for client in self.clients:
            op = client.op
            if op is None:
                if self.sim.faulty and self.sim.now >= client.idle_until:
                    self._new_op(client)
                continue
            if self.sim.now >= op.deadline:
                client.leader_guess = 0  # timed out: the node it asked may be cut off
                self._attempt(client, op)
            elif op.retry_at and self.sim.now >= op.retry_at:
                self._attempt(client, op)

    def _new_op(self, client: SimClient) -> None:
        rng = self.rng
        client.seq += 1
        kind = rng.choice(("get", "get", "put", "append", "cas", "delete"))
        key = f"k{rng.randrange(self.options.keys)}"
        value = f"{client.id}.{client.seq}"
        expected: str | None = None
        if kind == "cas":
            expected = rng.choice(
                (None, *(f"{c.id}.{rng.randint(1, max(1, c.seq))}" for c in self.clients))
            )
        self.clock += 1
        if kind in ("get", "delete"):
            value = ""
        op = ClientOp(
            kind=kind,
            key=key,
            value=value or None,
            expected=expected,
            seq=client.seq,
            call=self.clock,
            via_read_index=kind == "get" and rng.random() < 0.7,
        )
        self.result.operations += 1
        client.op = op
        self._attempt(client, op)

    def _attempt(self, client: SimClient, op: ClientOp) -> None:
        # Attempt numbers are global so a late answer never matches a later operation.
        self.attempts += 1
        op.attempt = self.attempts
        op.retry_at = 0
        op.deadline = self.sim.now + 3 * self.options.election_tick
        up = [n for n in self.nodes.values() if n.kernel is not None and not n.paused]
        if not up:
            return
        node = self.nodes.get(client.leader_guess)
        roll = self.rng.random() if self.options.random_reads else 1.0
        if roll < self.options.random_reads / 2:
            # Whoever believes it leads, maybe a deposed leader cut off from the others.
            leaders = [n for n in up if n.kernel is not None and n.kernel.role is Role.LEADER]
            node = self.rng.choice(leaders or up)
        elif roll < self.options.random_reads:
            node = self.rng.choice(up)
        if node is None or node.kernel is None or node.paused:
            node = self.rng.choice(up)
        if node.id == self.sim.faults.clients_cut:
            # Its client-facing network is down: the connection fails, the client tries
            # another node soon.
            client.leader_guess = 0
            op.retry_at = self.sim.now + self.rng.randint(1, 3)
            return
        kernel = node.kernel
        assert kernel is not None
        if op.via_read_index:
            context = f"{client.id}:{op.seq}:{op.attempt}".encode()
            node.reads[context] = (client.id, op.attempt)
            leading = kernel.role is Role.LEADER and kernel.conf_state.voters != (node.id,)
            kernel.read_index(context)
            self.sim.process(node)
            if leading and (
                context not in node.reads or any(c == context for _, c in node.ready_reads)
            ):
                self.result.reads_without_round += 1
            return
        request = Request(client_id=client.id, seq=op.seq, op=_command(op))
        try:
            index = kernel.propose(encode_request(request))
        except NotLeader as exc:
            client.leader_guess = exc.leader
            op.retry_at = self.sim.now + 1
            return
        except ProposalRejected:
            op.retry_at = self.sim.now + 2
            return
        client.leader_guess = node.id
        node.proposals[index] = (kernel.term, client.id, op.attempt)
        self.sim.process(node)


def _command(op: ClientOp) -> Get | Put | Delete | Append | Cas:
    if op.kind == "get":
        return Get(key=op.key)
    if op.kind == "put":
        assert op.value is not None
        return Put(key=op.key, value=op.value)
    if op.kind == "delete":
        return Delete(key=op.key)
    if op.kind == "append":
        assert op.value is not None
        return Append(key=op.key, value=op.value)
    assert op.value is not None
    return Cas(key=op.key, expected=op.expected, new=op.value)
