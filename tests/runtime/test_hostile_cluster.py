"""Hostile input against real `raftmw node` processes on loopback (TLS, the hostile peer
holding node 1's certificate): messages a forged peer sends, a bad member address, and a
node restarted on a wiped data directory. After each, the cluster still serves and no
acknowledged write is lost."""

from __future__ import annotations

import contextlib
import shutil
import signal
from pathlib import Path

import anyio
import pytest
from hostile_peer import batch, send_as_peer

from framework.core import (
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    Heartbeat,
    InstallSnapshot,
    Snapshot,
    SnapshotMeta,
)
from framework.errors import BadRequest, RaftError, Timeout
from framework.runtime.localcluster import LocalCluster
from framework.transport.bounds import MAX_TERM

pytestmark = pytest.mark.anyio

HUGE = 2**63 - 1


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    local = LocalCluster(tmp_path, nodes=3, cluster_id="hostile")
    local.start_all()
    yield local
    local.stop_all()


async def _write(cluster: LocalCluster, prefix: str, count: int, acked: dict[str, str]) -> None:
    async with cluster.client(timeout=20.0) as client:
        for i in range(count):
            await client.put(f"{prefix}{i}", f"v{i}")
            acked[f"{prefix}{i}"] = f"v{i}"


async def _check(cluster: LocalCluster, acked: dict[str, str]) -> None:
    async with cluster.client(timeout=20.0) as client:
        for key, value in acked.items():
            assert await client.get(key) == value, f"acknowledged write {key} lost"


def _alive(cluster: LocalCluster) -> dict[int, bool]:
    return {nid: node.alive() for nid, node in cluster.nodes.items()}


async def test_forged_peer_messages_neither_kill_nor_wipe_a_node(cluster: LocalCluster) -> None:
    """A node accepts peer connections from lower ids only (the lower id dials), so the
    forged peer poses as node 1 to nodes 2 and 3, with node 3 leading and node 2 following."""
    with anyio.fail_after(300):  # generous: the machine may be loaded
        await cluster.wait_serving()
        acked: dict[str, str] = {}
        await _write(cluster, "before", 20, acked)
        async with cluster.client(timeout=20.0) as client:
            await client.transfer_leader(3)
            before = await client.status(2)
        leader, target = 3, 2

        # A term no SQLite INTEGER survives incrementing (it used to kill nodes in
        # save_ready, and again after every restart), to the leader and to a follower.
        for nid in (2, 3):
            overflow = Heartbeat(src=1, dst=nid, term=HUGE, commit=HUGE)
            assert send_as_peer(
                cluster.nodes[nid].address,
                [batch(overflow)],
                as_node=1,
                cluster_id="hostile",
                tls=cluster.tls,
                linger=10,
            ), f"node {nid} kept a connection that sent term {HUGE}"
        # A forged append that would make the follower apply forged commands at an absurd
        # term and commit index, and a forged answer that would depose the leader.
        forged_append = AppendEntries(
            src=1,
            dst=target,
            term=HUGE,
            prev_index=0,
            prev_term=0,
            entries=(Entry(HUGE, 1, data=b"forged"),),
            commit=HUGE,
        )
        assert send_as_peer(
            cluster.nodes[target].address,
            [batch(forged_append)],
            as_node=1,
            cluster_id="hostile",
            tls=cluster.tls,
            linger=10,
        )
        forged_answer = AppendResponse(src=1, dst=leader, term=HUGE, index=HUGE)
        assert send_as_peer(
            cluster.nodes[leader].address,
            [batch(forged_answer)],
            as_node=1,
            cluster_id="hostile",
            tls=cluster.tls,
            linger=10,
        )
        # A well-formed InstallSnapshot at a higher term whose bytes are junk: it used to
        # wipe the follower's log before failing to restore (and the node never started
        # again). It must be refused before anything is deleted or adopted.
        forged_term = before["term"] + 1000
        junk = InstallSnapshot(
            src=1,
            dst=target,
            term=forged_term,
            snapshot=Snapshot(
                meta=SnapshotMeta(
                    index=before["last_index"] + 1000,
                    term=forged_term,
                    conf_state=ConfState(voters=(1, 2, 3)),
                ),
                data=b"junk",
            ),
        )
        send_as_peer(
            cluster.nodes[target].address,
            [batch(junk)],
            as_node=1,
            cluster_id="hostile",
            tls=cluster.tls,
            linger=1,
        )
        async with cluster.client(timeout=10.0) as client:
            while (after := await client.status(target))["invalid_messages"] <= before[
                "invalid_messages"
            ]:
                await anyio.sleep(0.05)
        assert _alive(cluster) == {1: True, 2: True, 3: True}
        assert after["term"] < forged_term  # the kernel never saw the junk snapshot
        assert after["snapshot_index"] == before["snapshot_index"]
        assert after["last_index"] >= before["last_index"]
        # Each forged frame got past the handshake and was refused at decode.
        logs = {nid: cluster.nodes[nid].log_path.read_text() for nid in (2, 3)}
        assert f"term={HUGE} exceeds the bound {MAX_TERM}" in logs[2]
        assert f"term={HUGE} exceeds the bound {MAX_TERM}" in logs[3]
        assert "refused the snapshot" in logs[2]

        await _write(cluster, "after", 20, acked)
        # Nothing rejected was persisted: the attacked follower restarts from its own disk
        # (SIGKILL, no clean shutdown) with every entry it had.
        cluster.kill(target)
        cluster.start(target)
        await cluster.wait_serving([target])
        async with cluster.client(timeout=10.0) as client:
            restarted = await client.status(target)
            assert restarted["term"] <= MAX_TERM
            assert restarted["last_index"] >= after["last_index"]
        await _check(cluster, acked)
        assert _alive(cluster) == {1: True, 2: True, 3: True}


async def test_bad_member_address_is_refused_and_a_wiped_node_does_not_rejoin(
    cluster: LocalCluster,
) -> None:
    with anyio.fail_after(300):  # generous: the machine may be loaded
        await cluster.wait_serving()
        acked: dict[str, str] = {}
        await _write(cluster, "k", 20, acked)
        async with cluster.client(timeout=10.0) as admin:
            for address, expected in [
                ("no-port-here", "expected HOST:PORT"),
                ("127.0.0.1:70000", "expected HOST:PORT"),
                ("bad host:7000", "not a valid host name"),
                ("[not-v6]:7000", "not an IPv6 address"),
            ]:
                with pytest.raises(BadRequest, match=expected) as refused:
                    await admin.members("add", 4, address)
                assert repr(address) in str(refused.value)
            status = await admin.status(1)
            assert status["voters"] == [1, 2, 3] and status["learners"] == []

            await admin.transfer_leader(1)  # node 3's death leaves node 1 leading
            # Node 1, leading, has seen node 3 store entries (and keeps that on disk).
            await _write(cluster, "seen", 1, acked)
            while 3 not in (status := await admin.status(1))["stored_peers"]:
                if status["role"] != "leader":  # a loaded machine moved leadership
                    await admin.transfer_leader(1)
                await anyio.sleep(0.05)

        # Node 3 loses its disk and is restarted as it was (the default, existing), and
        # then as if the cluster were new: it must refuse both times, not rejoin. With
        # "new", the evidence is that node 1 once saw node 3 store entries, which it keeps
        # when it no longer leads: leadership moves to node 2 first, whose progress for the
        # dead node 3 shows nothing.
        wiped = cluster.nodes[3]
        cluster.kill(3)
        shutil.rmtree(wiped.data_dir)
        for option in ("existing", "new"):
            if option == "new":
                async with cluster.client(timeout=10.0) as admin:
                    await admin.transfer_leader(2)
                    assert 3 in (await admin.status(1))["stored_peers"]  # kept as a follower
            wiped.log_path.unlink()
            wiped.extra_args = ["--initial-cluster", option]
            cluster.start(3)
            assert wiped.process is not None
            code = await anyio.to_thread.run_sync(lambda: wiped.process.wait(60))  # type: ignore[union-attr]
            assert code != 0, option
            output = wiped.log_path.read_text()
            assert "members remove 3" in output and "--join" in output, output[-2000:]
            assert "already hold cluster 'hostile'" in output

        # The cluster serves on two nodes, and the operator's way back works: remove node
        # 3, start it with --join, add it back.
        await _write(cluster, "later", 10, acked)
        async with cluster.client(timeout=20.0) as admin:
            await admin.members("remove", 3)
            wiped.extra_args = ["--join"]
            cluster.start(3)
            try:
                await admin.members("add", 3, wiped.address)
            except RaftError as exc:
                # A loaded machine: the first attempt added the learner but timed out before
                # promoting it, and the client's retry found node 3 a member already.
                assert "already a member" in str(exc) or isinstance(exc, Timeout), exc
            while (await admin.status(1))["voters"] != [1, 2, 3]:
                with contextlib.suppress(RaftError):  # promote once it has caught up
                    await admin.members("promote", 3)
                await anyio.sleep(0.1)
        await _check(cluster, acked)
        assert cluster.nodes[3].alive()
        cluster.signal(3, signal.SIGTERM)


async def test_an_empty_directory_with_no_cluster_to_find_is_refused_naming_the_choice(
    tmp_path: Path,
) -> None:
    lone = LocalCluster(tmp_path, nodes=2, cluster_id="nobody")
    node = lone.nodes[1]
    node.extra_args = ["--initial-cluster", "existing"]
    lone.start(1)  # node 2 never starts: nobody answers the probe
    try:
        assert node.process is not None
        code = await anyio.to_thread.run_sync(lambda: node.process.wait(60))  # type: ignore[union-attr]
    finally:
        lone.stop_all()
    assert code != 0
    output = node.log_path.read_text()
    assert "--initial-cluster new" in output and "node 2 did not answer" in output, output
