"""``KVClient``: the async client of a raftmw KV cluster.

It finds the leader (following ``not_leader`` redirects), keeps one connection per node,
and retries through leader changes and lost connections until its deadline. Each write
carries a client session ``(client_id, seq)`` and a retry reuses it, so a write the
cluster already applied is not applied again (Raft dissertation §6.3).

Attempts and the deadline
-------------------------
A request has a deadline (``timeout``, retries included); each attempt, one node, waits at
most ``attempt_timeout`` of it (``client.attempt_timeout``: about one election timeout).
A hung, stopped or cut-off leader accepts a request and never answers; bounding the attempt
lets the client move on to the other nodes, which elect a new leader in about one election
timeout, instead of spending the whole deadline on one silent node. A leader that is only
slow (overloaded) is not abandoned: an attempt also waits twice the slowest answer of the
last second or so, if that is longer; only silence beyond both ends it. A node that failed an
attempt (silent, unreachable, connection lost) is *penalised* for ``attempt_timeout``: it is
tried only after every other node, so writers do not walk back into the same hung leader
(a redirect to it is not followed meanwhile). Followers help: one that has not heard from
its leader for an election timeout answers "no leader known" instead of a redirect.

The client works in rounds: the known leader first, then the other nodes in random order,
penalised ones last; a round in which no node led anywhere ends with a backoff: before the
n-th such wait the client sleeps a time drawn from ``[0, min(cap, retry_backoff * 2**n))``
(exponential backoff with full jitter, ``framework.retry.backoff_delay``; the cap is an
eighth of ``attempt_timeout``, at most 0.5s, so an election is polled a few times per
attempt), so the clients that lost a leader together do not come back together.

Attempts do not lengthen per retry (as the node's adaptive policy lets a retried operation
do): a node that stopped answering is tried again once its penalty ends, and a longer wait
on it then would only delay reaching the leader the others elected meanwhile. What adapts
is the measured part: twice the slowest recent answer, above.

What the errors promise
-----------------------
All are ``framework.errors.RaftError``. ``Overloaded``: the leader shed the request and no
attempt of it can have been applied. ``Unavailable``: no leader reached before the deadline
and no attempt can have been applied (reads never apply anything). ``Timeout``: an attempt
of this write may have been applied (it reached a node that did not say it refused it), so
the client retried with the same ``(client_id, seq)`` until the deadline and the outcome is
unknown. ``BadRequest``: the request can never succeed as sent. So once an attempt may have
applied, an ``overloaded`` answer from a later attempt no longer ends the request: it is
retried like any other until the deadline.

One client may be used by many tasks at once. The cluster remembers one outstanding write
per session, so each write in flight holds a session of its own, taken from the client's
idle sessions (a new one is opened when all are busy) and given back when the write's
outcome is known; a client used by one task at a time uses one session, ``client_id``.
Concurrent requests share the connections and leave in one write when made together.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence, Set
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio
import anyio.abc

from framework.auth import ClientCredentials
from framework.errors import (
    BadRequest,
    Forbidden,
    Overloaded,
    RaftError,
    Timeout,
    Unauthorized,
    Unavailable,
)
from framework.retry import backoff_delay
from framework.transport.wire import (
    AdminFlags,
    AdminMembers,
    AdminService,
    AdminTransfer,
    AppCall,
    ClientResponse,
    ErrorReply,
    KVOp,
    RequestBody,
    StatusRequest,
)

if TYPE_CHECKING:
    from framework.config import Settings

__all__ = ["DEFAULT_ATTEMPT_TIMEOUT", "KVClient", "parse_peers"]

_FLAG_ACTIONS = frozenset({"list", "get", "set", "unset", "history"})
_KV_BODIES = (KVOp, AppCall)
"""Requests an attempt timeout bounds (admin requests get the whole deadline)."""
_NONE_TRIED: frozenset[str] = frozenset()
"""A request's ``tried`` before its first attempt fails: no set built on the common path."""


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


def _tcp_connector(connect_timeout: float, credentials: ClientCredentials) -> Connector:
    from framework.transport.tcp_client import TcpClientConnection

    context = credentials.ssl_context()  # a bad file fails here, not on every connection
    token = credentials.token

    def connect(address: str) -> AbstractAsyncContextManager[_Connection]:
        return TcpClientConnection.connect(
            address, timeout=connect_timeout, ssl_context=context, token=token
        )

    return connect


def _refused(error: ErrorReply) -> RaftError | None:
    """The error to raise at once for a refusal no retry can change, or None."""
    if error.kind == "unauthorized":
        return Unauthorized(error.message)
    if error.kind == "forbidden":
        return Forbidden(error.message)
    if error.kind == "bad_request":
        return BadRequest(error.message)
    return None


class _Session:
    """A client session: its id and the last ``seq`` it used."""

    __slots__ = ("client_id", "seq")

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.seq = 0


DEFAULT_ATTEMPT_TIMEOUT = 0.5
"""``client.attempt_timeout = "auto"`` under the default settings (``Settings.
client_attempt_timeout``; a test keeps the two equal): what a client built without settings
gives one node."""


class _Failure(enum.Enum):
    """How an attempt ended without an answer."""

    NOT_SENT = "not sent"
    """No connection could be opened: the node never saw the request."""
    LOST = "lost"
    """The connection failed with the request on it: it may have reached the node."""
    SILENT = "silent"
    """Sent, and no answer by the attempt's deadline: it may yet take effect."""


_FAILURES = {
    _Failure.NOT_SENT: "cannot connect",
    _Failure.LOST: "the connection failed before an answer",
    _Failure.SILENT: "no answer within the attempt timeout",
}


class KVClient:
    def __init__(
        self,
        peers: str | Sequence[str] | Mapping[int, str],
        *,
        timeout: float = 5.0,
        attempt_timeout: float | None = None,
        connect_timeout: float = 1.0,
        retry_backoff: float = 0.02,
        client_id: int | None = None,
        connector: Connector | None = None,
        credentials: ClientCredentials | None = None,
    ) -> None:
        """``timeout``: a request's deadline, retries included. ``attempt_timeout``: the
        most one attempt (one node) may take of it; by default ``DEFAULT_ATTEMPT_TIMEOUT``,
        never more than ``timeout``. ``from_settings`` takes both from settings."""
        if timeout <= 0 or (attempt_timeout is not None and attempt_timeout <= 0):
            raise ValueError(
                f"timeout={timeout!r} attempt_timeout={attempt_timeout!r}: expected seconds > 0"
            )
        if retry_backoff < 0:
            raise ValueError(f"retry_backoff={retry_backoff!r}: expected seconds >= 0")
        self.peers = parse_peers(peers)
        self.credentials = (
            credentials if credentials is not None else ClientCredentials.from_environment()
        )
        """TLS and token (``RAFTMW_TLS_CA``, ``RAFTMW_TLS_CERT``, ``RAFTMW_TLS_KEY``,
        ``RAFTMW_TOKEN`` when not given)."""
        self.timeout = timeout
        self.attempt_timeout = min(timeout, attempt_timeout or DEFAULT_ATTEMPT_TIMEOUT)
        self.retry_backoff = retry_backoff
        # Rounds in which no node knew a leader are an election in progress: poll it a few
        # times per attempt timeout, not at the 500ms a doubling backoff would reach.
        self._max_backoff = max(retry_backoff, min(0.5, self.attempt_timeout / 8))
        self.client_id = client_id or random.SystemRandom().randrange(1, 2**62)
        """The first session's id (the only one unless writes run concurrently)."""
        self._idle_sessions: list[_Session] = [_Session(self.client_id)]
        self._connector = connector or _tcp_connector(connect_timeout, self.credentials)
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._connections: dict[str, tuple[_Connection, anyio.Event]] = {}
        self._opening: dict[str, anyio.Event] = {}
        self._leader: str | None = None
        self._penalised: dict[str, float] = {}
        """Address -> until when (anyio's clock) it is tried only after the others."""
        self._rng = random.Random(self.client_id)
        self._slowest = 0.0
        """The slowest answered attempt lately (seconds), decaying by half per second."""
        self._slowest_at = 0.0
        self._clock: Callable[[], float] = anyio.current_time
        """anyio's clock; on asyncio, the loop's own ``time`` (what ``anyio.current_time``
        returns there, without looking up the backend on every read)."""

    @classmethod
    def from_settings(
        cls,
        peers: str | Sequence[str] | Mapping[int, str],
        settings: Settings,
        **kwargs: Any,
    ) -> KVClient:
        """A client timed by ``settings`` (``[client]``, and ``transport.connect_timeout``);
        keyword arguments override them (``timeout=...``, ``connector=...``)."""
        timed: dict[str, Any] = {
            "timeout": settings.client.request_timeout,
            "retry_backoff": settings.client.retry_backoff,
            "connect_timeout": settings.transport.connect_timeout,
        }
        timed.update(kwargs)
        if "attempt_timeout" not in kwargs:
            timed["attempt_timeout"] = min(timed["timeout"], settings.client_attempt_timeout)
        return cls(peers, **timed)

    async def __aenter__(self) -> KVClient:
        # Connections live in holder tasks of this group, so a request's timeout scope
        # never contains a connection's own task group (structured concurrency).
        stack = AsyncExitStack()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        try:
            self._clock = asyncio.get_running_loop().time
        except RuntimeError:  # not on asyncio (trio): anyio's clock, as it is
            self._clock = anyio.current_time
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
        await self._write("put", key, value)

    async def delete(self, key: str) -> None:
        await self._write("delete", key)

    async def append(self, key: str, value: str) -> str:
        result = await self._write("append", key, value)
        assert isinstance(result, str)
        return result

    async def cas(self, key: str, expected: str | None, new: str) -> bool:
        result = await self._write("cas", key, new, expected)
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
        if isinstance(response, _Failure):
            raise Unavailable(f"node {node_id} at {address} did not answer")
        if response.error is not None and (refused := _refused(response.error)) is not None:
            raise refused
        if response.status is None:
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
            if isinstance(response, _Failure):
                raise Unavailable(f"node {node_id} at {address} did not answer")
            if not response.ok:
                assert response.error is not None
                raise _refused(response.error) or BadRequest(response.error.message)
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

    async def app_call(
        self, app: str, payload: bytes, *, read: bool = False, stale: bool = False
    ) -> bytes:
        """Call the cluster's application ``app`` (``framework.apps``): a write through the
        log with this client's session (exactly once, retried like ``put``), or a read
        (linearizable, or from any node's state as it is when ``stale``). Returns the
        application's encoded result."""
        if read:
            body = AppCall(app=app, payload=payload, read=True, stale=stale)
            if stale:
                return await self._stale_read(body)
            data: object = (await self._call(body, write=False)).data
        else:
            data = await self._with_session(
                lambda client_id, seq: AppCall(
                    app=app, payload=payload, client_id=client_id, seq=seq
                )
            )
        if not isinstance(data, bytes):
            raise BadRequest(
                f"the cluster answered a call of {app!r} with {type(data).__name__}; expected "
                "the application's encoded result (bytes)"
            )
        return data

    async def _stale_read(self, body: AppCall) -> bytes:
        """Any node answers a stale read: the known leader first, then the others."""
        now = anyio.current_time()
        deadline = now + self.timeout
        tried: set[str] = set()
        last_problem = "no node answered"
        while now < deadline:
            address = self._next_target(tried, now)
            if address is None:
                await anyio.sleep(min(self.retry_backoff, deadline - now))
                tried.clear()
                now = anyio.current_time()
                continue
            tried.add(address)
            attempt_deadline = min(deadline, now + self.attempt_timeout)
            outcome = await self._send_once(address, body, attempt_deadline)
            now = anyio.current_time()
            if isinstance(outcome, _Failure):
                last_problem = f"{address}: {_FAILURES[outcome]}"
                continue
            if outcome.ok:
                assert outcome.data is not None
                return outcome.data
            assert outcome.error is not None
            if (refused := _refused(outcome.error)) is not None:
                raise refused
            last_problem = f"{address}: {outcome.error.message}"
        raise Unavailable(f"no node answered within {self.timeout:g}s (last: {last_problem})")

    async def _with_session(
        self,
        build: Callable[[int, int], RequestBody],
        send: Callable[[RequestBody], Awaitable[ClientResponse]] | None = None,
    ) -> object:
        """Send the write ``build(client_id, seq)`` with an idle session's next ``seq``,
        through ``send`` (an embedded node's own path) or to the leader."""
        session = self._take_session()
        body = build(session.client_id, session.seq)
        try:
            if send is not None:
                response = await send(body)
            else:
                response = await self._call(body, write=True)
            return response.data if response.data is not None else response.value
        finally:
            # Even after a Timeout: the next write takes seq + 1, and the cluster refuses
            # (as stale) the timed-out one if it is still in flight.
            self._idle_sessions.append(session)

    def _take_session(self) -> _Session:
        """An idle session (a new one if all are busy), its ``seq`` advanced for a write."""
        idle = self._idle_sessions
        session = idle.pop() if idle else _Session(random.SystemRandom().randrange(1, 2**62))
        session.seq += 1
        return session

    async def _write(
        self,
        op: Literal["put", "delete", "append", "cas"],
        key: str,
        value: str | None = None,
        expected: str | None = None,
    ) -> object:
        """``_with_session`` for a KV write, built in place: one ``KVOp`` and no closure
        per write (the common path of a load generator)."""
        session = self._take_session()
        body = KVOp(
            op=op,
            key=key,
            value=value,
            expected=expected,
            client_id=session.client_id,
            seq=session.seq,
        )
        try:
            response = await self._call(body, write=True)
            return response.data if response.data is not None else response.value
        finally:
            self._idle_sessions.append(session)  # as in _with_session

    async def _call(self, body: RequestBody, *, write: bool) -> ClientResponse:
        """Send ``body`` to the leader, trying node after node until an answer or the
        deadline (see the module docstring: attempts, penalties, what each error means)."""
        # Two clock reads on the way to an answer: the deadline, which travels with the
        # request, and the answer's time, which the attempt limit adapts to.
        clock = self._clock
        now = clock()
        deadline = now + self.timeout
        # Admin requests wait on the cluster (a learner catching up, a transfer, a swap):
        # their one attempt may take the whole deadline.
        kv = isinstance(body, _KV_BODIES)
        attempt = self._attempt_limit(now) if kv else self.timeout
        maybe_applied = False
        last_problem = "no node answered"
        rounds = 0  # rounds of this request that ended without a leader: the backoff's exponent
        tried: Set[str] = _NONE_TRIED  # a set of its own from the first attempt not answered ok
        while now < deadline:
            address = self._next_target(tried, now)
            if address is None:
                # A round without a leader (an election, most likely): wait a little.
                delay = backoff_delay(self.retry_backoff, self._max_backoff, rounds, self._rng)
                await anyio.sleep(min(delay, deadline - now))
                rounds += 1
                tried = set()
                now = clock()
                continue
            sent = now
            outcome = await self._send_once(address, body, min(deadline, now + attempt))
            now = clock()
            if not isinstance(outcome, _Failure) and outcome.ok:
                # The common path: the known leader answered the first attempt.
                if self._penalised:
                    self._penalised.pop(address, None)  # it answers: it is alive
                self._leader = address
                if kv:
                    self._observe(now - sent, now)
                return outcome
            tried = {*tried, address}
            if isinstance(outcome, _Failure):
                # A write that reached the node (silent, or lost with the connection) may
                # yet apply; one never sent cannot. Either way the node goes last a while.
                maybe_applied = maybe_applied or (write and outcome is not _Failure.NOT_SENT)
                last_problem = f"{address}: {_FAILURES[outcome]}"
                self._penalised[address] = now + self.attempt_timeout
                if self._leader == address:
                    self._leader = None
                continue
            self._penalised.pop(address, None)  # it answers: whatever it says, it is alive
            error = outcome.error
            assert error is not None
            last_problem = f"{address}: {error.message}"
            if error.kind == "not_leader":
                # Refused before proposing: this attempt applied nothing. Follow the
                # redirect unless its target failed us recently (tried last, as penalised).
                self._leader = error.leader_address or None
            elif error.kind == "overloaded":
                if not maybe_applied:
                    raise Overloaded(error.message)
                # An earlier attempt may have applied: only the deadline ends this request.
                self._leader = None
            elif (refused := _refused(error)) is not None:
                raise refused  # bad_request, unauthorized, forbidden: no retry changes them
            else:  # "retry" (outcome unknown) or "unavailable" (no quorum there)
                maybe_applied = maybe_applied or (write and error.kind == "retry")
                self._leader = None
        if maybe_applied:
            raise Timeout(
                f"no outcome within {self.timeout:g}s; the write may or may not have been "
                f"applied (last: {last_problem})"
            )
        raise Unavailable(f"no leader reachable within {self.timeout:g}s (last: {last_problem})")

    def _attempt_limit(self, now: float) -> float:
        """``attempt_timeout``, or twice the slowest recent answer if longer (a leader that
        is merely slow under load is waited for), never past the request deadline."""
        if 2 * self._slowest <= self.attempt_timeout:
            return self.attempt_timeout  # the usual case: no answer lately came near it
        recent = self._slowest * math.pow(0.5, now - self._slowest_at)
        return min(self.timeout, max(self.attempt_timeout, 2 * recent))

    def _observe(self, seconds: float, now: float) -> None:
        """An attempt answered in ``seconds`` (its own time: not the request's retries)."""
        slowest = self._slowest  # decays, so an answer at least as slow is the new slowest
        if seconds >= slowest or seconds >= slowest * math.pow(0.5, now - self._slowest_at):
            self._slowest, self._slowest_at = seconds, now

    def _next_target(self, tried: Set[str], now: float) -> str | None:
        """The next node of this round: the known leader, else a random node not tried yet;
        nodes penalised until after ``now`` only once no other node is left at all (then
        the one penalised first). None ends the round."""
        penalised = self._penalised
        if penalised:  # none on the common path: no list built
            for address, until in list(penalised.items()):
                if until <= now:
                    del penalised[address]
        leader = self._leader
        if leader is not None and leader not in tried and leader not in penalised:
            return leader
        untried = [a for a in self.peers.values() if a not in tried]
        fresh = [a for a in untried if a not in penalised]
        if fresh:
            return self._rng.choice(fresh)
        if untried and all(a in penalised for a in self.peers.values()):
            return min(untried, key=penalised.__getitem__)
        return None

    async def _send_once(
        self, address: str, body: RequestBody, deadline: float
    ) -> ClientResponse | _Failure:
        """One request to one node, answered by ``deadline`` (on anyio's clock), or how it
        failed (a failed connection is dropped)."""
        cached = self._connections.get(address)
        conn = cached[0] if cached is not None else None
        try:
            if conn is None:
                with anyio.move_on_after(deadline - anyio.current_time()):
                    conn = await self._connection(address)
                if conn is None:
                    return _Failure.NOT_SENT
        except (OSError, RaftError, anyio.BrokenResourceError, anyio.EndOfStream):
            return _Failure.NOT_SENT
        try:
            # The connection times the request out itself: no cancel scope per request.
            return await conn.request(body, deadline=deadline)
        except TimeoutError:
            # No answer in time. The connection stays: the other requests sharing it have
            # deadlines of their own, and a stopped node accepts a new connection as
            # readily as it kept the old one.
            return _Failure.SILENT
        except (OSError, RaftError, anyio.BrokenResourceError, anyio.EndOfStream):
            self._drop(address, conn)
            return _Failure.LOST

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
