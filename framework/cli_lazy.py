"""A click group whose heavier subcommands are imported when first used.

Why (issue #15): every ``raftmw node`` process imports ``framework.cli``; importing the
``bench``/``compare``/``demo``, ``flags``, ``tls`` and ``lock`` commands with it loaded ten
modules a node never runs (the load generator, the fault schedule, the object client),
about 0.4 MiB of each node's resident memory. This is click's documented pattern for lazy
subcommands: the group knows each name and a function that builds the command, lists
them all (``--help`` builds each one to show its summary) and builds one the first time it
is looked up. A command added with ``add_command`` under the same name (a plugin's) wins,
as it did when the built-in was added first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click

__all__ = ["LazyGroup"]


class LazyGroup(click.Group):
    def __init__(
        self,
        *args: Any,
        lazy_subcommands: Mapping[str, Callable[[], click.Command]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._lazy: dict[str, Callable[[], click.Command]] = dict(lazy_subcommands or {})

    def add_lazy_command(self, name: str, build: Callable[[], click.Command]) -> None:
        """``build()`` returns the command ``name`` runs; called once, on first use."""
        self._lazy[name] = build

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        build = self._lazy.pop(cmd_name, None)
        if build is not None and cmd_name not in self.commands:
            self.add_command(build(), cmd_name)
        return super().get_command(ctx, cmd_name)
