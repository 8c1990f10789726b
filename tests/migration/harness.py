"""Shared pieces of the migration process tests: a 3-node cluster with the chaos plugin
enabled (its faults act only where the ``chaos`` flag is on), a background writer that
records every acknowledged write, and waits on the replicated migration state."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio

from framework.errors import RaftError
from framework.runtime.localcluster import LocalCluster

SETTINGS = """
[plugins]
enabled = ["chaos"]

[plugin.chaos]
persist_latency = "150ms"
"""


def make_cluster(root: Path, settings: str = SETTINGS) -> LocalCluster:
    path = root / "settings.toml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(settings)
    return LocalCluster(root, nodes=3, cluster_id="migrate", settings_files=[str(path)])


class Writer:
    """Writes keys one after another until stopped; ``acked`` holds what was acknowledged."""

    def __init__(self, cluster: LocalCluster, prefix: str) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.acked: dict[str, str] = {}
        self.errors = 0

    async def run(self) -> None:
        # A generous deadline: a write that fails is an error a client saw, not load.
        async with self.cluster.client(timeout=10.0) as client:
            i = 0
            while True:
                key, value = f"{self.prefix}{i}", f"v{i}"
                try:
                    await client.put(key, value)
                    self.acked[key] = value
                except RaftError:
                    self.errors += 1  # outcome unknown or refused: not acknowledged
                i += 1
                await anyio.sleep(0.005)

    async def check(self) -> None:
        async with self.cluster.client(timeout=10.0) as client:
            for key, value in self.acked.items():
                assert await client.get(key) == value, f"acknowledged write {key} lost"


@asynccontextmanager
async def writing(cluster: LocalCluster, prefix: str = "k") -> AsyncIterator[Writer]:
    writer = Writer(cluster, prefix)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        yield writer
        tg.cancel_scope.cancel()


async def service(cluster: LocalCluster, action: str, **args: Any) -> dict[str, Any]:
    async with cluster.client(timeout=10.0) as client:
        return await client.service("migration", action, json.dumps(args).encode())


async def node_status(cluster: LocalCluster, node_id: int) -> dict[str, Any]:
    async with cluster.client(timeout=2.0) as client:
        return await client.status(node_id)


async def wait_until(
    cluster: LocalCluster,
    predicate: Callable[[dict[int, dict[str, Any]]], bool],
    *,
    nodes: tuple[int, ...] = (1, 2, 3),
    timeout: float = 60.0,
) -> dict[int, dict[str, Any]]:
    """Poll the status pages of ``nodes`` until ``predicate`` holds for them."""
    with anyio.fail_after(timeout):
        async with cluster.client(timeout=2.0) as client:
            while True:
                pages: dict[int, dict[str, Any]] = {}
                for n in nodes:
                    with suppress(RaftError):
                        pages[n] = await client.status(n)
                if len(pages) == len(nodes) and predicate(pages):
                    return pages
                await anyio.sleep(0.1)


def flags_on(page: dict[str, Any], *names: str) -> bool:
    return all(page["flags"][name]["value"] for name in names)


def migration_of(page: dict[str, Any]) -> dict[str, Any] | None:
    return page.get("migration")
