"""Issue #19 with real processes: the leader is SIGSTOPped while clients write.

Three ``raftmw node`` processes on loopback (default settings: election timeout 200ms,
randomised up to 400ms; attempt timeout "auto" = 500ms). Four writers share one client
whose request deadline (30s) is far longer than anything the test waits for, so a client
that spent a whole deadline on the stopped leader (as before the attempt timeout) cannot
pass. What is asserted is the order of events:

- writes are acknowledged while the old leader is still stopped (it stays stopped until
  twenty are, within a deadline generous for a loaded machine; the expected gap is about
  two election timeouts plus one attempt timeout, under 1.5s);
- the old leader, resumed, answers no read from its stale state: the read asked of it
  directly goes into the history like any other;
- no write is applied twice, none acknowledged is lost, and the history is linearizable.
"""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest
from client_history import History, applied_tokens

from framework.client import KVClient
from framework.runtime.localcluster import LocalCluster
from framework.sim.linearizability import check_history

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_writers_get_past_a_sigstopped_leader(tmp_path: Path) -> None:
    keys = ("a", "b")
    cluster = LocalCluster(tmp_path, nodes=3, cluster_id="pause")
    cluster.start_all()
    try:
        await cluster.wait_serving()
        old = await cluster.leader()
        history = History()
        stopped = {"now": False, "acks": 0}
        after: list[int] = []
        enough = anyio.Event()

        async def writer(n: int, client: KVClient) -> None:
            i = 0
            while not enough.is_set():
                key = keys[i % 2]
                if await history.append(client, n, key, f"{n}.{i};"):
                    if stopped["now"]:
                        stopped["acks"] += 1
                    else:
                        after.append(i)
                if i % 4 == 0:
                    await history.get(client, n, key)
                i += 1

        async with cluster.client(timeout=30.0) as client, anyio.create_task_group() as tg:
            for n in range(1, 5):
                tg.start_soon(writer, n, client)
            with anyio.fail_after(30):
                while len(after) < 40:
                    await anyio.sleep(0.01)
            stopped["now"] = True
            cluster.signal(old, signal.SIGSTOP)
            try:
                with anyio.fail_after(15):
                    while stopped["acks"] < 20:
                        await anyio.sleep(0.01)
            finally:
                stopped["now"] = False
                after.clear()
                cluster.signal(old, signal.SIGCONT)
            # Straight after waking, the old leader still thinks it leads (its peers have
            # moved on): a read it answered now from its own state would be stale.
            async with KVClient({old: cluster.nodes[old].address}, timeout=5.0) as direct:
                await history.get(direct, 99, "a")
            with anyio.fail_after(30):
                while len(after) < 20:
                    await anyio.sleep(0.01)
            enough.set()
        async with cluster.client(timeout=30.0) as reader:
            final = {key: await history.get(reader, 0, key) for key in keys}
    finally:
        cluster.stop_all()
    for key in keys:
        tokens = applied_tokens(final[key])
        assert len(tokens) == len(set(tokens)), f"{key}: a write was applied twice"
        assert set(history.acknowledged[key]) <= set(tokens)  # no acknowledged write lost
    verdict = check_history(history.ops)
    assert verdict.ok is not False, verdict.explanation
