"""An audit log of leadership changes, flag changes and component swaps.

This is a complete raftmw plugin, installed like any third-party one:

- ``pyproject.toml`` registers this module under the ``raftmw`` entry point group;
- ``raftmw_declare_flags`` declares the ``audit_log`` flag (off by default), so operators
  turn auditing on per node, for a percentage of nodes, or cluster-wide, like any flag;
- observer hooks (``raftmw_on_leader_change``, ``raftmw_on_flag_change``,
  ``raftmw_on_plugin_swap``, ``raftmw_on_migration_event``) write one JSON line per event
  while the flag is on;
- ``raftmw_add_cli`` adds ``raftmw audit show``.

- ``raftmw_validate_settings`` reads and checks the plugin's own settings table,
  ``[plugin.audit]`` (``log_path``), when a node starts.

Hooks run on the node's event loop, so they must be quick: one short append to a file.
The file is ``[plugin.audit] log_path`` from the node's settings (also settable as
``RAFTMW_PLUGIN__AUDIT__LOG_PATH``), else ``$AUDIT_LOG_PATH``, else ``raftmw-audit.jsonl``
in the working directory. It is one setting per process: nodes that share a process share
their settings.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from framework.flags import FlagSpec
from framework.hooks import hookimpl

RAFTMW_TIER = "default"
RAFTMW_VERSION = "0.1.0"

FLAG = "audit_log"

# Which nodes have auditing on, as told by raftmw_on_flag_change (called at start and on
# every change). Keyed by node id: one process may run several nodes (tests, embedders).
_enabled: dict[int, bool] = {}


_SETTINGS = ("log_path",)
_configured: Path | None = None
"""``[plugin.audit] log_path`` of the last node that started in this process, if set."""


def audit_file() -> Path:
    if _configured is not None:
        return _configured
    return Path(os.environ.get("AUDIT_LOG_PATH", "raftmw-audit.jsonl"))


@hookimpl
def raftmw_validate_settings(settings: Any) -> list[str]:
    """Check ``[plugin.audit]`` and, if it is good, take ``log_path`` from it."""
    global _configured
    own = settings.plugin.get("audit", {})
    problems = [
        f"[plugin.audit] {key} = {value!r} is not a setting of this plugin; expected one of "
        f"{list(_SETTINGS)}"
        for key, value in own.items()
        if key not in _SETTINGS
    ]
    path = own.get("log_path")
    if path is not None and not (isinstance(path, str) and path.strip()):
        problems.append(
            f"[plugin.audit] log_path = {path!r} is not a file path; expected a non-empty string"
        )
    if not problems:
        _configured = Path(path) if path is not None else None
    return problems


def _write(node_id: int, event: str, **fields: Any) -> None:
    if not _enabled.get(node_id):
        return
    record = {"time": round(time.time(), 6), "node": node_id, "event": event, **fields}
    with audit_file().open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")


@hookimpl
def raftmw_declare_flags() -> list[FlagSpec]:
    return [
        FlagSpec(
            name=FLAG,
            default=False,
            description="Write leader changes, flag changes and swaps to an audit file.",
            owner="audit",
        )
    ]


@hookimpl
def raftmw_on_flag_change(
    node_id: int, flag: str, value: bool, reason: str, source: str, log_index: int | None
) -> None:
    # Turning auditing on is the first record written; turning it off, the last.
    if flag == FLAG and value:
        _enabled[node_id] = True
    _write(
        node_id, "flag", flag=flag, value=value, reason=reason, source=source, log_index=log_index
    )
    if flag == FLAG and not value:
        _enabled[node_id] = False


@hookimpl
def raftmw_on_leader_change(node_id: int, leader: int, term: int) -> None:
    _write(node_id, "leader", leader=leader, term=term)


@hookimpl
def raftmw_on_plugin_swap(
    node_id: int, seam: str, old: str, new: str, ok: bool, error: str | None
) -> None:
    _write(node_id, "swap", seam=seam, old=old, new=new, ok=ok, error=error)


@hookimpl
def raftmw_on_migration_event(
    node_id: int, migration: str, event: str, step: int, log_index: int, detail: str
) -> None:
    _write(
        node_id,
        "migration",
        migration=migration,
        migration_event=event,
        step=step,
        log_index=log_index,
        detail=detail[:500],
    )


@hookimpl
def raftmw_add_cli(group: click.Group) -> None:
    @group.group("audit")
    def audit() -> None:
        """The audit log written by the raftmw-audit plugin."""

    @audit.command("show")
    @click.option(
        "--file",
        "path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Audit file (default: $AUDIT_LOG_PATH).",
    )
    def show(path: Path | None) -> None:
        """Print the audit log, one event per line."""
        path = path or audit_file()
        if not path.exists():
            raise click.ClickException(f"{path}: no audit log (is the audit_log flag on?)")
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            rest = ", ".join(
                f"{k}={v}" for k, v in sorted(record.items()) if k not in ("time", "node", "event")
            )
            click.echo(f"node {record['node']} {record['event']}: {rest}")
