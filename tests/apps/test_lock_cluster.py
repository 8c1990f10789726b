"""The lock service on a running (embedded) cluster: contending clients never both hold a
lock, fencing tokens strictly increase, a vanished holder's lock is free after its TTL,
and the ``raftmw lock`` commands."""

from __future__ import annotations

import itertools
import random
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from framework.apps.locks import LockService
from framework.apps.objects import ReplicatedError
from framework.cli import main
from framework.config import load_settings
from framework.runtime.localcluster import free_ports
from raftmw import embed

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_contending_holders_never_overlap_and_a_vanished_holder_is_released(
    tmp_path: Path,
) -> None:
    peers = {i: f"127.0.0.1:{port}" for i, port in enumerate(free_ports(3), start=1)}
    settings = load_settings()
    grants: list[tuple[int, str, float, float]] = []  # token, holder, start, end (leader time)
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                embed(
                    LockService,
                    node_id=i,
                    peers=peers,
                    data_dir=tmp_path / f"n{i}",
                    settings=settings,
                    timeout=10.0,
                )
            )
            for i in peers
        ]

        async def contender(me: str, rounds: int) -> None:
            locks = nodes[int(me[-1]) % 3].object(LockService)
            rng = random.Random(me)
            for _ in range(rounds):
                ttl = rng.choice([0.2, 0.5])
                try:
                    grant = await locks.acquire("L", me, ttl)
                except ReplicatedError as exc:
                    assert exc.error == "LockHeld", exc
                    await anyio.sleep(0.02)
                    continue
                start, end = grant["expires"] - ttl, grant["expires"]
                if rng.random() < 0.7:  # else the lease just runs out
                    try:
                        end = await locks.release("L", me, grant["token"])
                    except ReplicatedError as exc:
                        assert exc.error == "NotHolder", exc  # it ran out first
                grants.append((grant["token"], me, start, end))

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for me in ("c1", "c2", "c3", "c4"):
                    tg.start_soon(contender, me, 25)

        # Acquiring again while one's own lease is live renews it (the same token, a new
        # expiry that may be earlier): one grant, from its first start to its latest end
        # (records of one token come from one holder's task, in order).
        merged: dict[int, tuple[int, str, float, float]] = {}
        for token, holder, start, end in grants:
            if token in merged:
                assert merged[token][1] == holder, (merged[token], holder)  # one holder per token
                start = merged[token][2]
            merged[token] = (token, holder, start, end)
        history = sorted(merged.values())
        assert len(history) >= 10 and len({g[1] for g in history}) > 1
        # Tokens increase with time and no two grants overlap:
        for earlier, later in itertools.pairwise(history):
            assert later[2] >= earlier[3], f"two holders at once: {earlier} and {later}"

        # A holder that vanishes: its lease runs out by the leader's clock, then another
        # client gets the lock with a higher fencing token.
        locks = nodes[0].object(LockService)
        gone = await locks.acquire("V", "vanished", 0.3)
        with pytest.raises(ReplicatedError, match="LockHeld"):
            await locks.acquire("V", "next", 5)
        with anyio.fail_after(30):
            while True:
                try:
                    taken = await locks.acquire("V", "next", 5)
                    break
                except ReplicatedError:
                    await anyio.sleep(0.05)
        assert taken["token"] > gone["token"]

        # The commands, against the same cluster (in a thread: they run their own loop).
        env = {"RAFTMW_PEERS": ",".join(f"{i}={a}" for i, a in peers.items())}

        def cli(*args: str) -> tuple[int, str]:
            result = CliRunner().invoke(main, ["lock", *args], env=env)
            return result.exit_code, result.output + repr(result.exception)

        code, out = await anyio.to_thread.run_sync(cli, "status", "V")
        assert code == 0 and f"V: holder=next token={taken['token']}" in out, out
        code, out = await anyio.to_thread.run_sync(
            cli, "acquire", "V", "--ttl", "5s", "--holder", "x"
        )
        assert code == 1 and "LockHeld: lock 'V' is held by 'next'" in out, out
        code, out = await anyio.to_thread.run_sync(
            cli, "acquire", "W", "--ttl", "10s", "--holder", "x"
        )
        assert code == 0 and "acquired W holder=x token=" in out, out
        token = out.split("token=")[1].split()[0]
        code, out = await anyio.to_thread.run_sync(
            cli, "release", "W", "--holder", "x", "--fencing-token", token
        )
        assert code == 0 and "released W" in out, out
        code, out = await anyio.to_thread.run_sync(cli, "acquire", "W", "--ttl", "soon")
        assert code == 2 and "--ttl" in out, out
