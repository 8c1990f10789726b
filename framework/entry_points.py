"""Installed entry points as plain data (``Installed``), found without keeping
``importlib.metadata`` in a node.

Plugins (group ``raftmw``, `framework.plugins`) and applications (``raftmw.apps``,
`framework.apps.loading`) are found by their distributions' entry points. Reading them
takes ``importlib.metadata``, which imports the ``email`` parser, ``zipfile``, ``csv``
and about 40 more modules: 2.3 MiB of RSS (Linux, CPython 3.11) that a node would keep for
its whole life to use once at start (issue #15: 40 MiB idle RSS per node). So a node finds
them with `installed_apart`, in a forked child (`framework.load_apart`), and gets back
`InstalledEntryPoint` records: the name, the ``module:attribute`` it names and its
distribution's version. ``load`` imports that module itself (``importlib.import_module``),
as ``importlib.metadata.EntryPoint.load`` does. Every other command reads them in-process
(`installed`), with the same result.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from framework.load_apart import load_apart

__all__ = ["InstalledEntryPoint", "installed", "installed_apart"]


@dataclass(frozen=True, slots=True)
class InstalledEntryPoint:
    """One entry point of an installed distribution."""

    name: str
    value: str
    """What it names: ``package.module`` or ``package.module:attribute.attribute``."""
    version: str
    """Its distribution's version ("?" when the entry point has no distribution)."""

    def load(self) -> object:
        """The object ``value`` names (``ImportError``/``AttributeError`` if it is gone)."""
        module_name, _, attributes = self.value.partition(":")
        # Extras ("module:attr [extra]") say what to install, not what to load.
        attributes = attributes.split("[", 1)[0].strip()
        obj: object = importlib.import_module(module_name.strip())
        for attribute in filter(None, attributes.split(".")):
            obj = getattr(obj, attribute)
        return obj


def installed(groups: Iterable[str]) -> dict[str, tuple[InstalledEntryPoint, ...]]:
    """Each group's installed entry points, sorted by name, read in this process."""
    import importlib.metadata  # here, not at the top: see the module docstring

    found: dict[str, tuple[InstalledEntryPoint, ...]] = {}
    # A distribution's version parses its whole METADATA (raftmw's holds the README: 141
    # KB), so once per distribution, not once per entry point.
    versions: dict[int, str] = {}
    for group in groups:
        records = []
        for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
            dist = ep.dist
            if dist is not None and id(dist) not in versions:
                versions[id(dist)] = dist.version
            version = "?" if dist is None else versions[id(dist)]
            records.append(InstalledEntryPoint(name=ep.name, value=ep.value, version=version))
        found[group] = tuple(records)
    return found


def installed_apart(groups: Iterable[str]) -> Mapping[str, tuple[InstalledEntryPoint, ...]]:
    """`installed`, read in a forked child when this process can fork and has not imported
    ``importlib.metadata`` (`framework.load_apart`)."""
    wanted = tuple(groups)
    return load_apart(
        lambda: installed(wanted),
        what="the installed plugins and applications",
        keeps_out=("importlib.metadata",),
    )
