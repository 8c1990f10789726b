"""``raftmw flags``: per-node evaluations, cluster-wide changes (waiting for every node's
outcome), node-local overrides and the history of flag entries."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import click

from framework.auth import ClientCredentials
from framework.cli_options import (
    ask_each_node,
    client_call,
    credential_options,
    parse_flag,
    peers_from,
    peers_option,
    timeout_option,
)
from framework.client import KVClient

T = TypeVar("T")

__all__ = ["flags"]


@click.group()
def flags() -> None:
    """Feature flags: per-node evaluations, cluster-wide changes, overrides, history."""


def _flag_scope(cluster: bool, node: int | None) -> tuple[str, int | None]:
    if node is not None and cluster:
        raise click.UsageError("give either --cluster or --node N, not both")
    return ("node", node) if node is not None else ("cluster", None)


def _show_flags(result: dict[int, dict[str, Any]], as_json: bool, only: Sequence[str] = ()) -> None:
    if as_json:
        click.echo(json.dumps({str(k): v for k, v in result.items()}, indent=2, sort_keys=True))
        return
    from rich.console import Console

    from framework.runtime.report import flags_table

    Console().print(flags_table(result, only))


def _per_node(
    peers: str, timeout: float, credentials: ClientCredentials, action: str
) -> dict[int, dict[str, Any]]:
    return ask_each_node(
        peers,
        timeout,
        credentials,
        lambda client, node_id: client.flags(action, scope="node", node_id=node_id),
        lambda _node_id, exc: {"error": str(exc)},
    )


def _wait_options(func: Callable[..., T]) -> Callable[..., T]:
    func = click.option(
        "--wait-timeout",
        type=click.FloatRange(min=0),
        default=30.0,
        show_default=True,
        help="Seconds to wait for every node to apply the change and swap.",
    )(func)
    return click.option(
        "--wait/--no-wait",
        default=True,
        show_default=True,
        help="Wait for each node's outcome (--no-wait: return once the change is committed).",
    )(func)


def _change_flags(
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
    change: Callable[[KVClient], Awaitable[dict[str, Any]]],
    *,
    names: Sequence[str],
    wait: bool,
    wait_timeout: float,
) -> tuple[dict[str, Any], dict[int, Any]]:
    """Make ``change``; then, unless told not to, each node's outcome of it."""
    from framework.runtime.flag_outcomes import outcome_of, wait_for_outcomes

    members = peers_from(peers)

    async def go(client: KVClient) -> tuple[dict[str, Any], dict[int, Any]]:
        result = await change(client)
        if not wait:
            return result, {}
        log_index = result.get("log_index")
        if log_index is None:  # a node-local change: that node answered after its swap
            node_id = int(result.get("node_id", 0))
            outcome = outcome_of(node_id, result, None, names)
            return result, {node_id: outcome}
        outcomes = await wait_for_outcomes(
            client, members, int(log_index), names, deadline=wait_timeout
        )
        return result, dict(outcomes)

    return client_call(peers, timeout, credentials, go)  # type: ignore[no-any-return]


def _report_outcomes(outcomes: dict[int, Any]) -> None:
    for outcome in outcomes.values():
        click.echo(outcome.line(), err=not outcome.ok)
    failed = [o.node_id for o in outcomes.values() if not o.ok]
    if failed:
        click.echo(f"the change did not take effect on node(s) {failed}", err=True)
        sys.exit(1)


@flags.command("list")
@peers_option
@timeout_option
@credential_options
@click.option("--json", "as_json", is_flag=True)
def flags_list(peers: str, timeout: float, as_json: bool, credentials: ClientCredentials) -> None:
    """Every flag on every node: value, reason, source, and the log index that set it."""
    _show_flags(_per_node(peers, timeout, credentials, "list"), as_json)


@flags.command("get")
@click.argument("names", nargs=-1, required=True)
@peers_option
@timeout_option
@credential_options
@click.option("--json", "as_json", is_flag=True)
def flags_get(
    names: tuple[str, ...],
    peers: str,
    timeout: float,
    as_json: bool,
    credentials: ClientCredentials,
) -> None:
    """NAMES on every node."""
    result = _per_node(peers, timeout, credentials, "get")
    for table in result.values():
        unknown = [n for n in names if "flags" in table and n not in table["flags"]]
        if unknown:
            raise click.ClickException(
                f"unknown flag(s) {unknown}; known: {sorted(table['flags'])}"
            )
    if as_json:
        click.echo(
            json.dumps(
                {str(k): {n: v.get("flags", {}).get(n) for n in names} for k, v in result.items()},
                indent=2,
            )
        )
        return
    _show_flags(result, False, names)


@flags.command("set")
@click.argument("assignments", nargs=-1, required=True)
@click.option("--cluster", is_flag=True, help="One log entry for the whole cluster (default).")
@click.option(
    "--node",
    type=click.IntRange(min=1),
    default=None,
    help="Node-local override on node N (break-glass).",
)
@click.option("--reason", default="", help="Note kept in the flag history.")
@peers_option
@timeout_option
@credential_options
@click.option("--json", "as_json", is_flag=True)
@_wait_options
def flags_set(
    assignments: tuple[str, ...],
    cluster: bool,
    node: int | None,
    reason: str,
    peers: str,
    timeout: float,
    as_json: bool,
    credentials: ClientCredentials,
    wait: bool,
    wait_timeout: float,
) -> None:
    """Set flags, e.g. `actors=on backpressure=25%`: all in one atomic change.

    Then waits until every node has applied the change and swapped its plugins, prints
    each node's outcome, and exits 1 if any node failed to swap, lacks the plugin of a flag
    set, or had not applied it in --wait-timeout (--no-wait: return once committed).
    """
    scope, node_id = _flag_scope(cluster, node)
    values = dict(map(parse_flag, assignments))
    result, outcomes = _change_flags(
        peers,
        timeout,
        credentials,
        lambda c: c.flags("set", scope=scope, node_id=node_id, assignments=values, reason=reason),
        names=tuple(values),
        wait=wait,
        wait_timeout=wait_timeout,
    )
    where = f"node {node_id} (override)" if node_id else "the cluster"
    click.echo(f"set {', '.join(assignments)} on {where}")
    _show_flags({int(result.get("node_id", 0)): result}, as_json, tuple(values))
    _report_outcomes(outcomes)


@flags.command("unset")
@click.argument("names", nargs=-1, required=True)
@click.option("--cluster", is_flag=True, help="Remove the cluster-wide values (default).")
@click.option("--node", type=click.IntRange(min=1), default=None, help="Remove node N's overrides.")
@click.option("--reason", default="")
@peers_option
@timeout_option
@credential_options
@_wait_options
def flags_unset(
    names: tuple[str, ...],
    cluster: bool,
    node: int | None,
    reason: str,
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
    wait: bool,
    wait_timeout: float,
) -> None:
    """Remove cluster-wide values (or a node's overrides) so lower layers decide again.

    Waits for every node's outcome like `flags set`.
    """
    scope, node_id = _flag_scope(cluster, node)
    _, outcomes = _change_flags(
        peers,
        timeout,
        credentials,
        lambda c: c.flags("unset", scope=scope, node_id=node_id, names=names, reason=reason),
        names=(),
        wait=wait,
        wait_timeout=wait_timeout,
    )
    click.echo(f"unset {', '.join(names)}")
    _report_outcomes(outcomes)


@flags.command("history")
@peers_option
@timeout_option
@credential_options
@click.option("--json", "as_json", is_flag=True)
def flags_history(
    peers: str,
    timeout: float,
    as_json: bool,
    credentials: ClientCredentials,
) -> None:
    """Cluster-wide flag changes, with the log index each took effect at."""
    result = client_call(peers, timeout, credentials, lambda c: c.flags("history"))
    history = result.get("history", [])
    if as_json:
        click.echo(json.dumps(history, indent=2))
        return
    if not history:
        click.echo("no cluster-wide flag changes")
    for change in history:
        sets = ", ".join(f"{k}={v}" for k, v in change["set"].items())
        unsets = ", ".join(f"-{k}" for k in change["unset"])
        note = f"  ({change['reason']})" if change["reason"] else ""
        click.echo(
            f"index {change['log_index']}: {', '.join(x for x in (sets, unsets) if x)}{note}"
        )
