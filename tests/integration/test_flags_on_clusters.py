"""Issue 12: each plugin flag on a real cluster, doing the work it exists for, against legacy.

Three in-process `RaftNode`s on the in-memory network (``tests.runtime.inprocess_cluster``),
the same settings on both sides but the flag. Every assertion is on what the nodes report
(``status()``: their timeout policy, their queues, their terms), never on how long
something took:

- ``adaptive_timeout``: once the links carry latency, the leader's deadline for a client
  request (the one ``performance.timeouts.client_request`` gives every request it parks)
  rises above its configured base, and never past ``client.request_timeout``; with the flag
  off it stays at the base whatever the links do;
- ``backpressure``: a burst of proposals larger than ``max_pending`` leaves the proposal
  queue at its bound and the excess shed (answered ``overloaded``, counted by reason), where
  the legacy queue takes the whole burst; every write that was accepted commits.

(The snapshot-flag re-evaluation and ``flags set`` reporting a failed swap are shown in
``tests/runtime/test_node_flags.py``; heartbeats going ahead of bulk appends on a saturated
link in ``tests/integration/test_saturated_link.py``.)
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from framework.transport.wire import ClientRequest, ClientResponse, KVOp
from tests.runtime.inprocess_cluster import cluster

pytestmark = pytest.mark.anyio

BASE = 0.2
"""``performance.timeouts.client_request.base_timeout`` in these runs (seconds)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _client_request(status: dict[str, Any]) -> dict[str, float]:
    timeouts: dict[str, dict[str, float]] = status["performance"]["timeouts"]
    return timeouts["client_request"]


@pytest.mark.parametrize("adaptive", [True, False], ids=["adaptive", "fixed"])
async def test_latency_on_the_links_lengthens_the_client_request_deadline(adaptive: bool) -> None:
    settings: dict[str, Any] = {
        "flags.adaptive_timeout": adaptive,
        # An election timeout of 0.5-1s: the delays below never cost the leader its term.
        "raft.tick_interval": "10ms",
        "raft.election_tick": 50,
        "client.request_timeout": "4s",
        "performance.timeouts.client_request.base_timeout": f"{BASE}s",
        "performance.timeouts.client_request.max_timeout": "10s",
    }
    async with cluster(**settings) as c, c.client(timeout=20.0) as client:
        leader = await c.wait_leader()
        for i in range(20):  # a quiet network: commits in well under the base
            await client.put(f"quiet{i}", "v")
        quiet = _client_request(await c.nodes[leader].status())
        assert quiet["timeout_seconds"] == BASE
        assert quiet["count"] >= 20
        # Every message between the leader and a follower now takes 20-120ms each way:
        # a commit takes about one round trip to the faster follower, and varies.
        for follower in c.nodes:
            if follower != leader:
                c.network.set_link(leader, follower, delay=(0.02, 0.12))
        deadlines = []
        for i in range(40):
            await client.put(f"slow{i}", "v")
            deadlines.append(_client_request(await c.nodes[leader].status())["timeout_seconds"])
        assert await c.leader() == leader  # the same term throughout: no election
        if adaptive:
            # SRTT + 4 * RTTVAR of the measured commits: longer than the base, within the
            # client's own deadline (past it the client has given up anyway).
            assert max(deadlines) > BASE
            assert all(BASE <= d <= 4.0 for d in deadlines)
        else:
            assert set(deadlines) == {BASE}


async def _flood(node: Any, count: int, first_client: int) -> list[ClientResponse]:
    """Submit ``count`` writes to ``node`` at once (no await between them: one burst, as
    many connections' worth of requests arriving in one event-loop turn), then wait for all
    the answers."""
    answers: list[ClientResponse] = []
    done = anyio.Event()

    def reply(response: ClientResponse) -> None:
        answers.append(response)
        if len(answers) == count:
            done.set()

    for i in range(count):
        op = KVOp(op="put", key=f"burst{i}", value="v", client_id=first_client + i, seq=1)
        node.submit(ClientRequest(id=i, body=op), reply)
    with anyio.fail_after(60):
        await done.wait()
    return answers


@pytest.mark.parametrize("bounded", [True, False], ids=["backpressure", "legacy"])
async def test_a_burst_past_max_pending_is_shed_by_backpressure_and_queued_by_legacy(
    bounded: bool,
) -> None:
    bound, burst = 500, 3000
    settings: dict[str, Any] = {
        "flags.backpressure": bounded,
        "performance.backpressure.max_pending": bound,
        # An election timeout of 5-10 s: one Ready of 3,000 entries does not cost the term,
        # even on a loaded machine (a new leader would refuse the rest as not_leader, and
        # this test is about the queue, not elections).
        "raft.tick_interval": "10ms",
        "raft.election_tick": 500,
        "client.request_timeout": "30s",
        "performance.timeouts.client_request.base_timeout": "30s",
        "performance.timeouts.client_request.max_timeout": "30s",
    }
    async with cluster(**settings) as c:
        leader = c.nodes[await c.wait_leader()]
        answers = await _flood(leader, burst, first_client=1000)
        queue = (await leader.status())["performance"]["queues"]["proposals"]
        refused = [a for a in answers if not a.ok]
        assert {a.error.kind for a in refused if a.error is not None} <= {"overloaded"}
        if bounded:
            # Memory stays bounded: the queue never held more than its bound, and the node
            # says how many it shed and why.
            assert queue["max_depth"] <= bound
            assert queue["rejected"] == len(refused) >= burst - bound
            assert sum(queue["rejected_by_reason"].values()) == queue["rejected"]
        else:
            # The legacy queue grows with the burst: nothing is refused, all of it waits.
            assert queue["max_depth"] >= burst - 1
            assert not refused
        # Whatever was accepted is committed and applied, on every node.
        written = sum(1 for i in range(burst) if leader.sm.read(f"burst{i}") == "v")
        assert written == burst - len(refused)
