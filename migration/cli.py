"""``raftmw migrate``: check, start and steer a staged migration.

Added to the ``raftmw`` command by the migration plugin (``raftmw_add_cli``). Every
command but ``check`` talks to the cluster's leader through the ``migration`` node
service; ``check`` validates a plan here, against the plugins installed on this machine
(optional ones included), and prints its stages.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from framework.auth import ClientCredentials
from framework.cli_options import credential_options
from framework.client import KVClient, parse_peers
from framework.errors import RaftError
from framework.plugins import PluginError, PluginHost, Tier
from framework.runtime.eventloop import run_async
from migration.plan import Plan, PlanError, parse_plan

__all__ = ["migrate", "render_status"]

_SERVICE = "migration"

_peers_option = click.option(
    "--peers", required=True, envvar="RAFTMW_PEERS", help="ID=HOST:PORT,... (or $RAFTMW_PEERS)."
)
_timeout_option = click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="Seconds before giving up."
)
_reason_option = click.option("--reason", default="", help="A note kept in the migration's log.")


def _members(peers: str) -> dict[int, str]:
    try:
        return parse_peers(peers)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--peers") from None


def _call(
    peers: str,
    timeout: float,
    credentials: ClientCredentials,
    fn: Callable[[KVClient], Awaitable[Any]],
) -> Any:
    members = _members(peers)

    async def go() -> Any:
        async with KVClient(members, timeout=timeout, credentials=credentials) as client:
            return await fn(client)

    try:
        return run_async(go)
    except RaftError as exc:
        raise click.ClickException(str(exc)) from None


def _request(
    peers: str, timeout: float, credentials: ClientCredentials, action: str, **args: Any
) -> dict[str, Any]:
    payload = json.dumps(args).encode()
    result: dict[str, Any] = _call(
        peers, timeout, credentials, lambda c: c.service(_SERVICE, action, payload)
    )
    return result


def local_plan(path: Path) -> Plan:
    """``path`` parsed against every plugin installed here (optional ones too)."""
    from migration.plugin import merge_metrics

    host = PluginHost()
    optional = [i.name for i in host.plugins() if i.tier is Tier.OPTIONAL]
    if optional:
        host = PluginHost(enabled=optional)
    registry = host.declare_flags()
    metrics = merge_metrics(host.answers("raftmw_analysis_metrics"))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: cannot read the plan: {exc}") from None
    return parse_plan(text, flags=registry.names(), metrics=metrics)


_plan_argument = click.argument(
    "plan_path", metavar="PLAN", type=click.Path(dir_okay=False, exists=True, path_type=Path)
)


@click.group()
def migrate() -> None:
    """Staged migration: move the cluster to a new mode in steps, with analysis and
    automatic rollback, driven by the leader."""


@migrate.command("check")
@_plan_argument
def check(plan_path: Path) -> None:
    """Validate PLAN (TOML) and print its stages."""
    try:
        plan = local_plan(plan_path)
    except (PlanError, PluginError) as exc:
        raise click.ClickException(f"{plan_path}: {exc}") from None
    for line in plan.describe():
        click.echo(line)


@migrate.command("start")
@_plan_argument
@_peers_option
@_timeout_option
@_reason_option
@credential_options
def start(
    plan_path: Path, peers: str, timeout: float, reason: str, credentials: ClientCredentials
) -> None:
    """Start the migration PLAN describes (one migration at a time)."""
    try:
        text = plan_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{plan_path}: cannot read the plan: {exc}") from None
    answer = _request(peers, timeout, credentials, "start", plan=text, reason=reason)
    click.echo(f"migration {answer['migration']!r} started at log index {answer['log_index']}")
    for line in answer.get("plan", [])[1:]:
        click.echo(line)


def _simple(action: str, done: str) -> None:
    @migrate.command(action)
    @_peers_option
    @_timeout_option
    @_reason_option
    @credential_options
    def command(peers: str, timeout: float, reason: str, credentials: ClientCredentials) -> None:
        answer = _request(peers, timeout, credentials, action, reason=reason)
        click.echo(f"migration {answer['migration']!r} {done} (log index {answer['log_index']})")

    command.__doc__ = {
        "pause": "Hold the running migration where it is (its gates wait).",
        "resume": "Let a paused migration go on.",
        "promote": "Pass the current step's gate now (an approval, a pause, an analysis).",
        "abort": "Roll back now: the flags go back to their state before the migration.",
    }[action]


for _action, _done in (
    ("pause", "paused"),
    ("resume", "resumed"),
    ("promote", "promoted"),
    ("abort", "rolled back"),
):
    _simple(_action, _done)


@migrate.command("history")
@_peers_option
@_timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@credential_options
def history(peers: str, timeout: float, as_json: bool, credentials: ClientCredentials) -> None:
    """Every migration record the cluster keeps, oldest first."""
    answer = _request(peers, timeout, credentials, "history")
    if as_json:
        click.echo(json.dumps(answer, indent=2, sort_keys=True))
        return
    for record in answer.get("records", []):
        n = record.get("step", -1) + 1
        step = "" if n <= 0 else (f" {n}" if record["event"] == "step" else f" (step {n})")
        detail = record.get("detail", "")
        click.echo(
            f"{record['log_index']:>8}  {record['migration']}  {record['event']}{step}"
            f"  by {record.get('by') or '?'}  {detail[:160]}"
        )
    for outcome in answer.get("outcomes", []):
        click.echo(f"ended: {outcome['migration']} {outcome['outcome']} at {outcome['log_index']}")


async def _status(client: KVClient) -> dict[str, Any]:
    page = await client.service(_SERVICE, "status", b"{}")
    nodes: dict[str, Any] = {}
    for node_id in sorted(client.peers):
        try:
            status = await client.status(node_id)
        except RaftError as exc:
            nodes[str(node_id)] = {"error": str(exc)}
            continue
        nodes[str(node_id)] = {
            "role": status.get("role"),
            "mode": status.get("health", {}).get("mode", []),
            "flags": {k: v.get("value") for k, v in status.get("flags", {}).items()},
        }
    page["nodes"] = nodes
    return page


def render_status(page: dict[str, Any]) -> Group:
    """The live view of ``raftmw migrate status``."""
    parts: list[Any] = []
    active = page.get("active")
    if active is None:
        last = page.get("last_outcome")
        text = "no migration is running"
        if last:
            text += f"; the last, {last['migration']!r}, ended: {last['outcome']}"
            if last.get("detail"):
                text += f" ({last['detail'][:300]})"
        parts.append(Text(text))
    else:
        state = (
            "paused"
            if active["paused"]
            else ("gate passed" if active["gate_passed"] else "at its gate")
        )
        parts.append(
            Text(
                f"migration {active['id']!r}: step {active['step']} of {active['of']}, {state}; "
                f"leader node {page['leader']}; migrated nodes {active['migrated'] or 'none'}"
            )
        )
        for line in active["steps"]:
            parts.append(Text(line))
        live = active.get("live", {})
        phase = live.get("phase", "idle")
        line = f"now: {phase}"
        if phase == "pause" and "until" in live:
            line += f", {max(0.0, live['until'] - page['now']):.0f}s left"
        if phase == "analysis":
            line += (
                f" {live.get('analysis')!r}, measurement {live.get('measurement')} of "
                f"{live.get('of')} (failure limit {live.get('failure_limit')})"
            )
        parts.append(Text(line, style="bold"))
        measurements = live.get("measurements") or []
        if measurements:
            table = Table(title="last measurement")
            for column in ("check", "migrated", "old", "baseline", "verdict"):
                table.add_column(column)
            for check in measurements[-1]["checks"]:
                table.add_row(
                    check["check"],
                    _num(check["migrated"]),
                    _num(check["old"]),
                    _num(check["baseline"]),
                    ("ok: " if check["ok"] else "FAIL: ") + check["reason"],
                )
            parts.append(table)
    nodes = Table(title="nodes")
    for column in ("node", "role", "flags on"):
        nodes.add_column(column)
    for node_id, info in page.get("nodes", {}).items():
        if "error" in info:
            nodes.add_row(node_id, "?", info["error"][:60])
        else:
            nodes.add_row(node_id, str(info["role"]), ", ".join(info["mode"]) or "-")
    parts.append(nodes)
    return Group(*parts)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@migrate.command("status")
@_peers_option
@_timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print one status as JSON and exit.")
@click.option("--once", is_flag=True, help="Print the view once instead of following it.")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Refresh seconds.")
@credential_options
def status(
    peers: str,
    timeout: float,
    as_json: bool,
    once: bool,
    interval: float,
    credentials: ClientCredentials,
) -> None:
    """The running migration: steps, cohorts, the analysis against its thresholds, the
    time left in a pause, and every node's mode (live until it ends; Ctrl-C to leave)."""
    if as_json:
        page = _call(peers, timeout, credentials, _status)
        click.echo(json.dumps(page, indent=2, sort_keys=True))
        return
    console = Console()
    if once:
        console.print(render_status(_call(peers, timeout, credentials, _status)))
        return
    members = _members(peers)

    async def follow() -> None:
        async with KVClient(members, timeout=timeout, credentials=credentials) as client:
            with Live(console=console, refresh_per_second=4) as live:
                while True:
                    page = await _status(client)
                    live.update(render_status(page))
                    if page.get("active") is None:
                        return
                    await anyio.sleep(interval)

    try:
        run_async(follow)
    except RaftError as exc:
        raise click.ClickException(str(exc)) from None
