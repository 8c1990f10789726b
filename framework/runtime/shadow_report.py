"""``raftmw compare --shadow``: what each node's shadow components would have decided.

Reads the ``shadow`` section of every node's status page (see
``framework/runtime/shadow.py``) and prints, per node and decision kind, how often the new
component agreed with the legacy one, with the last mismatches.
"""

from __future__ import annotations

from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from framework.auth import ClientCredentials
from framework.client import KVClient, parse_peers
from framework.errors import RaftError
from framework.runtime.eventloop import run_async

__all__ = ["run_shadow"]


def run_shadow(
    peers: str, *, credentials: ClientCredentials, progress: bool = True
) -> dict[str, Any]:
    report = run_async(_gather, parse_peers(peers), credentials)
    if progress:
        _print(Console(), report)
    return report


async def _gather(peers: dict[int, str], credentials: ClientCredentials) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    async with KVClient(peers, credentials=credentials, timeout=10.0) as client:

        async def one(node: int) -> None:
            try:
                page = await client.status(node)
            except RaftError as exc:
                nodes[str(node)] = {"error": str(exc)}
                return
            nodes[str(node)] = {"shadow": page.get("shadow", {})}

        async with anyio.create_task_group() as tg:
            for node in sorted(peers):
                tg.start_soon(one, node)
    return {"nodes": dict(sorted(nodes.items()))}


def _print(console: Console, report: dict[str, Any]) -> None:
    table = Table(title="raftmw compare --shadow: the new components' decisions beside legacy")
    for column in ("node", "slot", "decision", "agree", "mismatch", "error", "agreement"):
        table.add_column(column, justify="right" if column in ("agree", "mismatch") else "left")
    samples: list[str] = []
    for node, entry in report["nodes"].items():
        if "error" in entry:
            table.add_row(node, "-", "no answer", "", "", "", entry["error"])
            continue
        if not entry["shadow"]:
            table.add_row(node, "-", "shadow off", "", "", "", "")
        for slot, tally in entry["shadow"].items():
            for kind, c in tally["decisions"].items():
                total = c["agree"] + c["mismatch"] + c["error"]
                share = f"{c['agree'] / total * 100:.1f} %" if total else "-"
                table.add_row(
                    node, slot, kind, str(c["agree"]), str(c["mismatch"]), str(c["error"]), share
                )
            samples += [f"node {node} {slot}: {s}" for s in tally["mismatch_samples"][-3:]]
    console.print(table)
    if samples:
        console.print("last mismatches (legacy answered, new would have):")
        for line in samples:
            console.print(f"  {line}")
