"""``KVClient``: the async client of a raftmw KV cluster.

It finds the leader (following ``not_leader`` redirects), keeps one connection per node,
and retries through leader changes and lost connections until its deadline. Each write
carries a client session ``(client_id, seq)`` and a retry reuses it, so a write the
cluster already applied is not applied again (Raft dissertation §6.3).

One client may be used by many tasks at once. The cluster remembers one outstanding write
per session, so each write in flight holds a session of its own, taken from the client's
idle sessions (a new one is opened when all are busy) and given back when the write's
outcome is known; a client used by one task at a time uses one session, ``client_id``.
Concurrent requests share the connections and leave in one write when made together.

Errors (all ``framework.errors.RaftError``): ``Overloaded`` (the leader shed the request;
nothing applied), ``Unavailable`` (no leader reached before the deadline; nothing known to be
applied), ``Timeout`` (a write was sent but its outcome is unknown), ``BadRequest``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType
from typing import Any, Protocol

import anyio
import anyio.abc

from framework.errors import BadRequest, Overloaded, RaftError, Timeout, Unavailable
from framework.transport.wire import (
    AdminFlags,
    AdminMembers,
    AdminService,
    AdminTransfer,
    ClientResponse,
    KVOp,
    RequestBody,
    StatusRequest,
)

__all__ = ["KVClient", "parse_peers"]

_FLAG_ACTIONS = frozenset({"list", "get", "set", "unset", "history"})


class _Connection(Protocol):
    async def request(
        self, body: RequestBody, *, timeout: float | None = None, deadline: float | None = None
    ) -> ClientResponse: ...


Connector = Callable[[str], AbstractAsyncContextManager[_Connection]]


def parse_peers(peers: str | Sequence[str] | Mapping[int, str]) -> dict[int, str]:
    """``"1=h:p,2=h:p"``, a list of ``"id=h:p"`` or ``"h:p"``, or a mapping -> id -> address.

    Addresses without an id are numbered from 1 in the order given.
    """
    if isinstance(peers, Mapping):
        return {int(k): str(v) for k, v in peers.items()}
    items = [p.strip() for p in peers.split(",")] if isinstance(peers, str) else list(peers)
    out: dict[int, str] = {}
    for position, item in enumerate(items, start=1):
        if not item:
            continue
        if "=" in item:
            left, _, address = item.partition("=")
            try:
                node_id = int(left)
            except ValueError:
                raise ValueError(
                    f"peer {item!r}: {left!r} is not a node id; expected ID=HOST:PORT"
                ) from None
        else:
            node_id, address = position, item
        if ":" not in address:
            raise ValueError(f"peer {item!r}: {address!r} is not HOST:PORT")
        if node_id <= 0 or node_id in out:
            raise ValueError(f"peer {item!r}: node id {node_id} is not positive or repeated")
        out[node_id] = address
    if not out:
        raise ValueError(f"no peers in {peers!r}; expected ID=HOST:PORT[,ID=HOST:PORT...]")
    return out


def _tcp_connector(connect_timeout: float) -> Connector:
    from framework.transport.tcp_client import TcpClientConnection

    def connect(address: str) -> AbstractAsyncContextManager[_Connection]:
        return TcpClientConnection.connect(address, timeout=connect_timeout)

    return connect


class _Session:
    """A client session: its id and the last ``seq`` it used."""

    __slots__ = ("client_id", "seq")

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.seq = 0


class KVClient:
    def __init__(
        self,
        peers: str | Sequence[str] | Mapping[int, str],
        *,
        timeout: float = 5.0,
        connect_timeout: float = 1.0,
        retry_backoff: float = 0.02,
        client_id: int | None = None,
        connector: Connector | None = None,
    ) -> None:
        self.peers = parse_peers(peers)
        self.timeout = timeout
        self.retry_backoff = retry_backoff
        self.client_id = client_id or random.SystemRandom().randrange(1, 2**62)
        """The first session's id (the only one unless writes run concurrently)."""
        self._idle_sessions: list[_Session] = [_Session(self.client_id)]
        self._connector = connector or _tcp_connector(connect_timeout)
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._connections: dict[str, tuple[_Connection, anyio.Event]] = {}
        self._opening: dict[str, anyio.Event] = {}
        self._leader: str | None = None
        self._rng = random.Random(self.client_id)

    async def __aenter__(self) -> KVClient:
        # Connections live in holder tasks of this group, so a request's timeout scope
        # never contains a connection's own task group (structured concurrency).
        stack = AsyncExitStack()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for _conn, closed in self._connections.values():
            closed.set()
        self._connections = {}
        stack, self._stack, self._tg = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    # == operations ===========================================================================

    async def get(self, key: str) -> str | None:
        """Linearizable read (ReadIndex on the leader)."""
        value = (await self._call(KVOp(op="get", key=key), write=False)).value
        assert value is None or isinstance(value, str)
        return value

    async def put(self, key: str, value: str) -> None:
        await self._write(KVOp(op="put", key=key, value=value))

    async def delete(self, key: str) -> None:
        await self._write(KVOp(op="delete", key=key))

    async def append(self, key: str, value: str) -> str:
        result = await self._write(KVOp(op="append", key=key, value=value))
        assert isinstance(result, str)
        return result

    async def cas(self, key: str, expected: str | None, new: str) -> bool:
        result = await self._write(KVOp(op="cas", key=key, expected=expected, value=new))
        assert isinstance(result, bool)
        return result

    async def status(self, node_id: int) -> dict[str, Any]:
        """The status page of one node (no leader needed)."""
        address = self.peers.get(node_id)
        if address is None:
            raise BadRequest(f"node {node_id} is not in the peer list {sorted(self.peers)}")
        response = await self._send_once(
            address, StatusRequest(), anyio.current_time() + self.timeout
        )
        if response is None or response.status is None:
            raise Unavailable(f"node {node_id} at {address} did not answer")
        return dict(response.status)

    async def members(self, action: str, node_id: int, address: str = "") -> dict[str, Any]:
        """Membership change through the leader: add, add_learner, promote or remove."""
        body = AdminMembers(action=action, node_id=node_id, address=address)  # type: ignore[arg-type]
        response = await self._call(body, write=True)
        return dict(response.status or {})

    async def flags(
        self,
        action: str,
        *,
        scope: str = "cluster",
        node_id: int | None = None,
        assignments: Mapping[str, Any] | None = None,
        names: Sequence[str] = (),
        reason: str = "",
    ) -> dict[str, Any]:
        """Read or change feature flags (see ``framework.transport.wire.AdminFlags``).

        Cluster-wide changes go through the leader; node-scope requests (overrides, and
        reads of one node's evaluations) go to ``node_id``.
        """
        from framework.config import Rollout
        from framework.flags import RolloutWire

        wire = {
            name: RolloutWire.from_rollout(value) if isinstance(value, Rollout) else value
            for name, value in (assignments or {}).items()
        }
        if action not in _FLAG_ACTIONS or scope not in ("cluster", "node"):
            raise BadRequest(
                f"flags action={action!r} scope={scope!r}; expected an action in "
                f"{sorted(_FLAG_ACTIONS)} and scope 'cluster' or 'node'"
            )
        body = AdminFlags(
            action=action,  # type: ignore[arg-type]  # checked just above
            scope=scope,  # type: ignore[arg-type]
            assignments=wire,
            names=list(names),
            reason=reason,
        )
        if node_id is not None:
            address = self.peers.get(node_id)
            if address is None:
                raise BadRequest(f"node {node_id} is not in the peer list {sorted(self.peers)}")
            response = await self._send_once(address, body, anyio.current_time() + self.timeout)
            if response is None:
                raise Unavailable(f"node {node_id} at {address} did not answer")
            if not response.ok:
                assert response.error is not None
                raise BadRequest(response.error.message)
            return dict(response.status or {})
        response = await self._call(body, write=action in ("set", "unset"))
        return dict(response.status or {})

    async def transfer_leader(self, to: int) -> None:
        await self._call(AdminTransfer(to=to), write=True)

    async def service(self, service: str, action: str, payload: bytes = b"") -> dict[str, Any]:
        """A request for a node service (``framework.services``), such as ``migration``,
        sent to the leader (a service that answers on any node answers there too)."""
        response = await self._call(
            AdminService(service=service, action=action, payload=payload), write=True
        )
        return dict(response.status or {})

    # == the retry loop =======================================================================

    async def _write(self, op: KVOp) -> object:
        idle = self._idle_sessions
        session = idle.pop() if idle else _Session(random.SystemRandom().randrange(1, 2**62))
        session.seq += 1
        body = KVOp(
            op=op.op,
            key=op.key,
            value=op.value,
            expected=op.expected,
            client_id=session.client_id,
            seq=session.seq,
        )
        try:
            return (await self._call(body, write=True)).value
        finally:
            # Even after a Timeout: the next write takes seq + 1, and the cluster refuses
            # (as stale) the timed-out one if it is still in flight.
            idle.append(session)

    async def _call(self, body: RequestBody, *, write: bool) -> ClientResponse:
        # One clock read on the way to an answer: the deadline travels with the request.
        deadline = anyio.current_time() + self.timeout
        maybe_applied = False
        last_problem = "no node answered"
        backoff = self.retry_backoff
        tried: set[str] = set()
        while True:
            address = self._leader or self._pick(tried)
            tried.add(address)
            response = await self._send_once(address, body, deadline)
            if response is None:
                # The request may have reached the node before the connection died.
                maybe_applied = maybe_applied or write
                last_problem = f"connection to {address} failed or did not answer"
                self._leader = None
            elif response.ok:
                self._leader = address
                return response
            else:
                error = response.error
                assert error is not None
                last_problem = f"{address}: {error.message}"
                if error.kind == "not_leader":
                    self._leader = error.leader_address or None
                    if self._leader and anyio.current_time() < deadline:
                        continue  # follow the redirect at once
                elif error.kind == "overloaded":
                    raise Overloaded(error.message)
                elif error.kind == "bad_request":
                    raise BadRequest(error.message)
                elif error.kind == "retry":
                    maybe_applied = maybe_applied or write
                    self._leader = None
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                break
            await anyio.sleep(min(backoff, remaining))
            if anyio.current_time() >= deadline:
                break
            backoff = min(backoff * 2, 0.5)
        if maybe_applied:
            raise Timeout(
                f"no outcome within {self.timeout:g}s; the write may or may not have been "
                f"applied (last: {last_problem})"
            )
        raise Unavailable(f"no leader reachable within {self.timeout:g}s (last: {last_problem})")

    def _pick(self, tried: set[str]) -> str:
        addresses = list(self.peers.values())
        fresh = [a for a in addresses if a not in tried]
        return self._rng.choice(fresh or addresses)

    async def _send_once(
        self, address: str, body: RequestBody, deadline: float
    ) -> ClientResponse | None:
        """One request to one node, answered by ``deadline`` (on anyio's clock); None if the
        connection failed (it is dropped) or the time ran out."""
        cached = self._connections.get(address)
        conn = cached[0] if cached is not None else None
        try:
            if conn is None:
                with anyio.move_on_after(deadline - anyio.current_time()):
                    conn = await self._connection(address)
                if conn is None:
                    return None
            # The connection times the request out itself: no cancel scope per request.
            return await conn.request(body, deadline=deadline)
        except TimeoutError:
            # No answer in time. The connection stays: the other requests sharing it have
            # deadlines of their own, and a stopped node accepts a new connection as
            # readily as it kept the old one.
            return None
        except (OSError, RaftError, anyio.BrokenResourceError, anyio.EndOfStream):
            if conn is not None:
                self._drop(address, conn)
            return None

    async def _connection(self, address: str) -> _Connection:
        """The open connection to ``address``, opening it if needed. Concurrent callers
        wait for one opening instead of each opening (and orphaning) their own."""
        while True:
            cached = self._connections.get(address)
            if cached is not None:
                return cached[0]
            opening = self._opening.get(address)
            if opening is None:
                break
            await opening.wait()  # then look again: the opening may have failed
        if self._tg is None:
            raise RuntimeError("KVClient must be used as 'async with KVClient(...) as client'")
        self._opening[address] = opened = anyio.Event()
        try:
            held: tuple[_Connection, anyio.Event] = await self._tg.start(self._hold, address)
        finally:
            del self._opening[address]
            opened.set()
        self._connections[address] = held
        return held[0]

    async def _hold(
        self, address: str, *, task_status: anyio.abc.TaskStatus[tuple[_Connection, anyio.Event]]
    ) -> None:
        closed = anyio.Event()
        started = False
        try:
            async with self._connector(address) as conn:
                task_status.started((conn, closed))
                started = True
                await closed.wait()
        except (OSError, anyio.BrokenResourceError):
            if not started:
                raise  # to the caller of start(): the connection could not be opened
            # Once handed out, a dead connection shows up in requests; nothing to report.

    def _drop(self, address: str, conn: _Connection) -> None:
        """Close ``conn`` if it is still the one cached for ``address`` (another request
        may already have replaced a failed connection with a fresh one)."""
        cached = self._connections.get(address)
        if cached is not None and cached[0] is conn:
            del self._connections[address]
            cached[1].set()
