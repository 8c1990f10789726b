"""The ``migration`` built-in plugin: the controller service on every node, the
``raftmw migrate`` commands, and the built-in analysis metrics.

Registered by entry point like any plugin (``pyproject.toml``); it imports the
framework's public API only, and no framework module imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from framework.hooks import hookimpl
from framework.plugins import PluginError
from framework.services import ServiceContext
from migration.analysis import BUILTIN_METRICS, Metric
from migration.controller import MigrationController

RAFTMW_TIER = "default"


def merge_metrics(answers: list[tuple[str, Any]]) -> dict[str, Metric]:
    """The built-in metrics plus every plugin's (``raftmw_analysis_metrics``); a name
    given twice is an error naming the plugin."""
    metrics: dict[str, Metric] = dict(BUILTIN_METRICS)
    for plugin, contributed in answers:
        if not isinstance(contributed, Mapping):
            raise PluginError(
                f"plugin {plugin!r} answered raftmw_analysis_metrics with "
                f"{type(contributed).__name__}; expected a mapping of name -> function"
            )
        for name, metric in contributed.items():
            if name in metrics:
                raise PluginError(
                    f"plugin {plugin!r} contributes analysis metric {name!r}, which exists "
                    "already; expected a new name"
                )
            if not callable(metric):
                raise PluginError(f"plugin {plugin!r}: analysis metric {name!r} is not callable")
            metrics[str(name)] = metric
    return metrics


@hookimpl
def raftmw_node_service(ctx: ServiceContext) -> MigrationController:
    return MigrationController(ctx, merge_metrics(ctx.plugin_answers("raftmw_analysis_metrics")))


@hookimpl
def raftmw_add_cli(group: click.Group) -> None:
    from migration.cli import migrate

    group.add_command(migrate)
