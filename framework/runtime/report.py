"""rich tables for the command line: cluster status and effective settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

from framework.config import Settings, settings_to_mapping

__all__ = ["settings_table", "status_table"]


def status_table(statuses: Mapping[int, Mapping[str, Any]]) -> Table:
    table = Table(title="raftmw cluster status")
    table.add_column("node", justify="right", no_wrap=True)
    table.add_column("role", no_wrap=True, min_width=9)
    for column in ("term", "leader", "commit", "applied", "log", "snapshot"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("peers (state@match)", overflow="fold", ratio=1)
    for node_id, st in sorted(statuses.items()):
        if st.get("role") in ("unreachable", "starting"):
            table.add_row(str(node_id), st.get("role", "?"), *[""] * 6, str(st.get("error", "")))
            continue
        progress = st.get("progress") or {}
        replication = " ".join(
            f"{peer}:{p['state']}@{p['match']}"
            for peer, p in sorted(progress.items())
            if str(peer) != str(node_id)
        )
        table.add_row(
            str(node_id),
            str(st["role"]),
            str(st["term"]),
            str(st["leader"] or "-"),
            str(st["commit"]),
            str(st["applied"]),
            str(st["log_entries"]),
            str(st["snapshot_index"]),
            replication,
        )
    return table


def settings_table(settings: Settings) -> Table:
    table = Table(title="effective settings")
    table.add_column("key")
    table.add_column("value")
    table.add_column("source")
    for key, value in _flatten(settings_to_mapping(settings)):
        table.add_row(key, repr(value), settings.sources.get(key, "default"))
    return table


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(_flatten(value, dotted + "."))
        else:
            rows.append((dotted, value))
    return rows


def plugins_table(plugins: Any, nodes: Mapping[int, Mapping[str, Any]]) -> Table:
    table = Table(title="raftmw plugins")
    for column in ("plugin", "tier", "version", "loaded", "flags", "seams"):
        table.add_column(column)
    for node_id in sorted(nodes):
        table.add_column(f"node {node_id}", overflow="fold")
    for p in plugins:
        active = []
        for node_id in sorted(nodes):
            slots = nodes[node_id]
            if "error" in slots:
                active.append("unreachable")
                continue
            mine = sorted(slot for slot, plugin in slots.items() if plugin == p.name)
            active.append(", ".join(mine) or "-")
        table.add_row(
            p.name,
            p.tier.value,
            p.version,
            "yes" if p.loaded else "no",
            ", ".join(p.flags) or "-",
            ", ".join(p.seams) or "-",
            *active,
        )
    return table


def flags_table(result: Mapping[int, Mapping[str, Any]], only: Any = ()) -> Table:
    table = Table(title="raftmw flags")
    for column in ("node", "flag", "value", "reason", "source", "log index", "detail"):
        table.add_column(column, overflow="fold")
    for node_id, answer in sorted(result.items()):
        if "error" in answer:
            table.add_row(str(node_id), "-", "-", "-", "-", "-", str(answer["error"]))
            continue
        for name, ev in sorted(answer.get("flags", {}).items()):
            if only and name not in only:
                continue
            table.add_row(
                str(node_id),
                name,
                "on" if ev["value"] else "off",
                ev["reason"],
                ev["source"],
                str(ev["log_index"] or "-"),
                ev["detail"],
            )
    return table
