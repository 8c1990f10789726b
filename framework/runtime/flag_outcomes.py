"""What each node made of a flag change: applied and swapped, failed, or not there yet.

A cluster flag change is committed once a majority stored it, but it does what the operator
asked only when every node has applied it and swapped in the plugins it selects. A swap can
fail on one node (two plugins claim a seam at the same priority, a component fails to
start) and a node can lack the plugin that declares the flag; both used to be visible only
on that node's status page. `wait_for_outcomes` asks every node (its ``outcome`` in the
answer to a node-scope ``flags list``) until each has evaluated the change's log index or
the deadline passes, and `NodeOutcome` says, per node, whether it runs what was asked.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from framework.errors import RaftError

__all__ = ["NodeOutcome", "outcome_of", "wait_for_outcomes"]

_POLL_INTERVAL = 0.05


class _FlagsClient(Protocol):
    async def flags(
        self, action: str, *, scope: str = ..., node_id: int | None = ...
    ) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeOutcome:
    node_id: int
    state: str
    """``ok``: applied, every swap done; ``failed``: a swap failed or a plugin is missing;
    ``pending``: not applied before the deadline; ``unreachable``: no answer."""
    detail: str

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def line(self) -> str:
        return f"node {self.node_id}: {self.state}: {self.detail}"


def outcome_of(
    node_id: int, answer: Mapping[str, Any], log_index: int | None, names: Collection[str]
) -> NodeOutcome | None:
    """The outcome shown by one node's ``flags`` answer, or None while it has not evaluated
    ``log_index`` yet (None for ``log_index``: a node-local change, already evaluated)."""
    outcome = answer.get("outcome")
    if not isinstance(outcome, Mapping):
        return NodeOutcome(
            node_id=node_id, state="failed", detail="the node does not report flag outcomes"
        )
    evaluated = int(outcome.get("evaluated_index", 0))
    if log_index is not None and evaluated < log_index:
        return None
    problems = [
        f"no plugin here declares flag {name!r}"
        for name in outcome.get("missing", ())
        if name in names
    ]
    swaps = list(outcome.get("swaps", ()))
    problems += [
        f"{s['slot']} kept {s['old']}, swap to {s['new']} failed: {s['error']}"
        for s in swaps
        if not s.get("ok")
    ]
    where = f"at index {evaluated}" if log_index is not None else "here"
    if log_index is not None and evaluated > log_index:
        where += f" (a later change than {log_index})"
    if problems:
        return NodeOutcome(node_id=node_id, state="failed", detail="; ".join(problems))
    done = [f"{s['slot']} {s['old']} -> {s['new']}" for s in swaps]
    detail = f"applied {where}; " + ("swapped " + ", ".join(done) if done else "no swap needed")
    return NodeOutcome(node_id=node_id, state="ok", detail=detail)


async def wait_for_outcomes(
    client: _FlagsClient,
    node_ids: Iterable[int],
    log_index: int,
    names: Collection[str],
    *,
    deadline: float,
) -> dict[int, NodeOutcome]:
    """Ask each node until it has evaluated ``log_index`` or ``deadline`` seconds pass."""
    waiting = sorted(set(node_ids))
    results: dict[int, NodeOutcome] = {}
    last_error: dict[int, str] = {}
    with anyio.move_on_after(deadline):
        while waiting:
            for node_id in list(waiting):
                try:
                    answer = await client.flags("list", scope="node", node_id=node_id)
                except RaftError as exc:
                    last_error[node_id] = f"{type(exc).__name__}: {exc}"
                    continue
                last_error.pop(node_id, None)
                outcome = outcome_of(node_id, answer, log_index, names)
                if outcome is not None:
                    results[node_id] = outcome
                    waiting.remove(node_id)
            if waiting:
                await anyio.sleep(_POLL_INTERVAL)
    for node_id in waiting:
        if node_id in last_error:
            results[node_id] = NodeOutcome(
                node_id=node_id, state="unreachable", detail=last_error[node_id]
            )
        else:
            results[node_id] = NodeOutcome(
                node_id=node_id,
                state="pending",
                detail=f"had not applied index {log_index} after {deadline:g}s",
            )
    return dict(sorted(results.items()))
