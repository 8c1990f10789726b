"""KVClient's retry loop against scripted nodes, on trio's virtual clock.

Each scripted node answers from a function of (request, virtual time), or never (a hung
node: the request is accepted and no answer comes), or refuses connections. Virtual time
makes "how many attempts went where, and when did the request end" exact and repeatable:
these are counts and orderings of events, not measurements.

What is shown:

- one silent node costs one attempt timeout, not the request deadline, and is not tried
  again while its penalty lasts, though the followers still redirect to it;
- every attempt of a write carries the same ``(client_id, seq)``;
- the errors keep their promise: ``Overloaded`` only when no attempt can have applied,
  ``Timeout`` once one may have (even if a later attempt is shed), ``Unavailable`` when
  none reached a node, and for reads;
- ``client.attempt_timeout``: "auto" is one election timeout with a floor, bounded by the
  request deadline, and a bad value names the key, the value and what was expected.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest
import trio.testing

from framework.client import DEFAULT_ATTEMPT_TIMEOUT, KVClient
from framework.config import SettingsError, load_settings
from framework.errors import Overloaded, Timeout, Unavailable
from framework.transport.streams import ConnectionLost
from framework.transport.wire import ClientResponse, ErrorReply, KVOp, RequestBody

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> object:
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


HANG = object()
"""An answer that never comes."""


@dataclass(frozen=True)
class Late:
    """An answer that comes ``after`` seconds."""

    after: float
    response: ClientResponse


Script = Callable[[RequestBody, float], ClientResponse | object]


def ok(body: RequestBody, now: float) -> ClientResponse:
    return ClientResponse(id=0, ok=True)


def refuse(kind: str, leader: str = "") -> Script:
    def answer(body: RequestBody, now: float) -> ClientResponse:
        error = ErrorReply(kind=kind, message=f"scripted {kind}", leader_address=leader)  # type: ignore[arg-type]
        return ClientResponse(id=0, ok=False, error=error)

    return answer


def hang(body: RequestBody, now: float) -> object:
    return HANG


@dataclass
class Node:
    script: Script
    reachable: bool = True
    requests: list[tuple[float, RequestBody]] = field(default_factory=list)


class ScriptedConnection:
    def __init__(self, node: Node) -> None:
        self.node = node

    async def request(
        self, body: RequestBody, *, timeout: float | None = None, deadline: float | None = None
    ) -> ClientResponse:
        now = anyio.current_time()
        self.node.requests.append((now, body))
        answer = self.node.script(body, now)
        if answer is HANG:
            assert deadline is not None
            await anyio.sleep(deadline - now)
            raise TimeoutError("no answer in time")
        if isinstance(answer, Late):
            assert deadline is not None
            if now + answer.after > deadline:
                await anyio.sleep(deadline - now)
                raise TimeoutError("no answer in time")
            await anyio.sleep(answer.after)
            answer = answer.response
        assert isinstance(answer, ClientResponse)
        return answer


def scripted_client(nodes: dict[str, Node], **kwargs: object) -> KVClient:
    @asynccontextmanager
    async def connect(address: str) -> AsyncIterator[ScriptedConnection]:
        node = nodes[address]
        if not node.reachable:
            raise ConnectionLost(address, "connection refused")
        yield ScriptedConnection(node)

    peers = {i: address for i, address in enumerate(nodes, start=1)}
    return KVClient(peers, connector=connect, **kwargs)  # type: ignore[arg-type]


def identities(*nodes: Node) -> set[tuple[int, int]]:
    return {
        (body.client_id, body.seq)
        for node in nodes
        for _, body in node.requests
        if isinstance(body, KVOp)
    }


# -- a silent leader ----------------------------------------------------------------------------


async def test_a_silent_leader_costs_one_attempt_and_is_tried_last_meanwhile() -> None:
    """Node a is the hung leader; b and c still redirect to it (they heard from it lately)
    until b wins the election at t0 + 1.2s. The write lands on b soon after, a got exactly
    one attempt (its penalty outlasts the redirects to it), and every attempt carried the
    same session."""
    start = anyio.current_time()
    elected = start + 1.2

    def follower_then_leader(body: RequestBody, now: float) -> object:
        return ok(body, now) if now >= elected else refuse("not_leader", "a")(body, now)

    a = Node(hang)
    b = Node(follower_then_leader)
    c = Node(refuse("not_leader", "a"))
    async with scripted_client(
        {"a": a, "b": b, "c": c}, timeout=30.0, attempt_timeout=1.0
    ) as client:
        client._leader = "a"  # it led until now
        await client.put("k", "v")
        done = anyio.current_time() - start
    assert len(a.requests) == 1
    assert a.requests[0][0] == start  # first, as the known leader
    # Not the 30s deadline: the first attempt timed out at 1s, rounds of b and c (each
    # pointing back at the penalised a) backed off until b answered.
    assert elected - start <= done < elected - start + client._max_backoff + 0.01
    assert len(identities(a, b, c)) == 1


async def test_a_redirect_is_followed_at_once_when_its_target_is_not_penalised() -> None:
    a = Node(refuse("not_leader", "b"))
    b = Node(ok)
    c = Node(refuse("not_leader", "b"))
    async with scripted_client({"a": a, "b": b, "c": c}, timeout=5.0) as client:
        start = anyio.current_time()
        for i in range(3):
            await client.put(f"k{i}", "v")
        assert anyio.current_time() == start  # no backoff, no timeout: straight to b
    assert len(b.requests) == 3
    assert len(a.requests) + len(c.requests) <= 1  # the leader is remembered


async def test_a_leader_that_is_only_slow_is_waited_for() -> None:
    """Under load, answers slow down past the attempt timeout gradually: an attempt waits
    twice the slowest recent answer too, so the client neither abandons nor re-sends to a
    leader that is answering, only late."""
    latencies = iter([0.3, 0.3, 0.3, 0.55, 0.55, 0.55])

    def loaded(body: RequestBody, now: float) -> object:
        return Late(next(latencies), ok(body, now))

    a = Node(loaded)
    b = Node(refuse("not_leader", "a"))
    async with scripted_client({"a": a, "b": b}, timeout=5.0, attempt_timeout=0.5) as client:
        client._leader = "a"
        for i in range(6):
            await client.put(f"k{i}", "v")
    assert (len(a.requests), len(b.requests)) == (6, 0)  # one attempt each, all on a


# -- what the errors promise ------------------------------------------------------------------


async def test_after_an_attempt_that_may_have_applied_overloaded_is_retried_until_timeout() -> None:
    """Issue #9 item 5: a timed-out attempt on a may have applied the write; the shed
    retries on b must not end in Overloaded (the caller would retry with a new seq and
    apply twice): the client retries with the same session until the deadline."""
    a = Node(hang)
    b = Node(refuse("overloaded"))
    async with scripted_client({"a": a, "b": b}, timeout=4.0, attempt_timeout=1.0) as client:
        client._leader = "a"
        with pytest.raises(Timeout, match="may or may not have been applied"):
            await client.append("k", "v")
    assert len(b.requests) > 1  # kept retrying after the first Overloaded answer
    assert len(identities(a, b)) == 1


async def test_overloaded_is_raised_at_once_when_no_attempt_can_have_applied() -> None:
    a = Node(refuse("overloaded"))
    async with scripted_client({"a": a}, timeout=4.0) as client:
        with pytest.raises(Overloaded):
            await client.put("k", "v")
    assert len(a.requests) == 1


async def test_unavailable_when_no_node_could_be_reached() -> None:
    """Connections refused everywhere: no attempt was ever sent, so nothing can have been
    applied: Unavailable, not Timeout."""
    nodes = {name: Node(ok, reachable=False) for name in "abc"}
    async with scripted_client(nodes, timeout=2.0) as client:
        with pytest.raises(Unavailable, match="cannot connect"):
            await client.put("k", "v")


async def test_a_lost_connection_may_have_applied_a_write() -> None:
    """A connection that fails with the write on it: the node may have appended it."""

    def lose(body: RequestBody, now: float) -> object:
        raise ConnectionLost("a", "reset")

    a = Node(lose)
    async with scripted_client({"a": a}, timeout=2.0, attempt_timeout=0.5) as client:
        with pytest.raises(Timeout):
            await client.put("k", "v")


async def test_a_read_that_no_node_answers_is_unavailable_never_timeout() -> None:
    nodes = {name: Node(hang) for name in "ab"}
    async with scripted_client(nodes, timeout=3.0, attempt_timeout=1.0) as client:
        with pytest.raises(Unavailable):
            await client.get("k")
    # Every node penalised: they are still tried, earliest penalised first.
    assert len(nodes["a"].requests) + len(nodes["b"].requests) == 3


async def test_admin_requests_get_the_whole_deadline_per_attempt() -> None:
    """A membership change waits on the cluster (a learner catching up): one attempt may
    take longer than an election timeout without being abandoned."""

    def slow(body: RequestBody, now: float) -> object:
        return Late(3.0, ok(body, now))

    a = Node(slow)
    async with scripted_client({"a": a}, timeout=10.0, attempt_timeout=0.5) as client:
        await client.members("add", 4, "127.0.0.1:1")
        with pytest.raises(Timeout):  # a KV write is not given 3s by one node
            await client.put("k", "v")
    assert [type(body).__name__ for _, body in a.requests[:2]] == ["AdminMembers", "KVOp"]


# -- the setting ------------------------------------------------------------------------------


def test_auto_attempt_timeout_is_one_election_timeout_with_a_floor() -> None:
    default = load_settings(env={})
    assert default.client.attempt_timeout is None  # "auto"
    assert default.client_attempt_timeout == DEFAULT_ATTEMPT_TIMEOUT == 0.5  # 200ms, floored
    slow = load_settings(env={}, overrides={"raft.tick_interval": "50ms"})
    assert slow.client_attempt_timeout == 1.0  # 20 ticks of 50ms
    short = load_settings(
        env={}, overrides={"raft.tick_interval": "1s", "client.request_timeout": "3s"}
    )
    assert short.client_attempt_timeout == 3.0  # never past the request deadline
    explicit = load_settings(env={"RAFTMW_CLIENT__ATTEMPT_TIMEOUT": '"250ms"'})
    assert explicit.client_attempt_timeout == 0.25
    client = KVClient.from_settings("1=127.0.0.1:1", slow, timeout=0.75)
    assert (client.timeout, client.attempt_timeout) == (0.75, 0.75)
    assert KVClient.from_settings("1=127.0.0.1:1", slow).attempt_timeout == 1.0


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("soon", "is not a duration"),
        ("0s", "is zero"),
        (5, "is not a duration"),
        ("6s", "is longer than client.request_timeout"),
    ],
)
def test_a_bad_attempt_timeout_names_key_value_and_expectation(value: object, problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={}, overrides={"client.attempt_timeout": value})
    message = str(caught.value)
    assert message.startswith("client.attempt_timeout:")
    assert problem in message and "expected" in message and '"auto"' in message


# -- waiting out an election: exponential backoff with full jitter -----------------------------


def _no_leader_until(elected: float) -> Script:
    def answer(body: RequestBody, now: float) -> object:
        return ok(body, now) if now >= elected else refuse("not_leader")(body, now)

    return answer


async def test_clients_that_lost_the_leader_together_come_back_apart() -> None:
    """Two clients, the same script: no node knows a leader for 1s. Each waits out the
    rounds with exponential backoff and full jitter (``framework.retry``): the waits are
    drawn from ``[0, min(cap, retry_backoff * 2**n))``, so the two clients' rounds do not
    line up (with a fixed doubling they were identical: the same requests at the same
    instants), and no wait is longer than its window."""
    times: list[list[float]] = []
    for client_id in (1, 2):
        origin = anyio.current_time()
        node = Node(_no_leader_until(origin + 1.0))
        async with scripted_client(
            {"a": node}, timeout=10.0, retry_backoff=0.02, client_id=client_id
        ) as client:
            await client.put("k", "v")
            cap = client._max_backoff
        rounds = [round(when - origin, 6) for when, _ in node.requests]
        assert rounds[-1] >= 1.0 and len(rounds) > 3  # it waited out the election
        gaps = [later - earlier for earlier, later in itertools.pairwise(rounds)]
        windows = [min(cap, 0.02 * 2**n) for n in range(len(gaps))]
        assert all(0 <= gap <= window + 1e-6 for gap, window in zip(gaps, windows, strict=True))
        times.append(rounds)
    assert times[0] != times[1]
