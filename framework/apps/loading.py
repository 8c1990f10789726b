"""Which application a node runs: ``raftmw node --app SPEC``.

``SPEC`` is ``kv`` (the built-in key-value store, the default), the name of an installed
application (the ``raftmw.apps`` entry point group: ``locks`` ships with raftmw), or
``package.module:Class`` naming a ``ReplicatedObject`` subclass or a ``StateMachine``
class whose constructor takes no arguments. Every node of a cluster must run the same
application (``framework.runtime.app_identity``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Final

from framework.apps.objects import ObjectMachine, ReplicatedObject
from framework.entry_points import InstalledEntryPoint, installed
from framework.statemachine import KVStateMachine, StateMachine

__all__ = ["APP_GROUP", "BadApplication", "load_application"]

APP_GROUP: Final = "raftmw.apps"


class BadApplication(ValueError):
    """``--app`` names nothing that can run as an application; the message says why."""


def load_application(
    spec: str, *, installed_apps: Sequence[InstalledEntryPoint] | None = None
) -> StateMachine:
    """A fresh state machine for ``spec`` (see the module docstring). ``installed_apps``:
    the ``raftmw.apps`` entry points, already found; None reads them here."""
    if spec == "kv":
        return KVStateMachine()
    if installed_apps is None:
        installed_apps = installed([APP_GROUP])[APP_GROUP]
    apps = {ep.name: ep.value for ep in installed_apps}
    target = apps.get(spec, spec)
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise BadApplication(
            f"--app {spec!r}: expected 'kv', an installed application "
            f"({', '.join(sorted(apps)) or 'none installed'}) or package.module:Class"
        )
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise BadApplication(f"--app {spec!r}: cannot load {target!r}: {exc}") from None
    if isinstance(obj, type) and issubclass(obj, ReplicatedObject):
        return ObjectMachine(obj)
    if isinstance(obj, type):
        machine = obj()
        if isinstance(machine, StateMachine):
            return machine
    raise BadApplication(
        f"--app {spec!r}: {target!r} is {obj!r}; expected a ReplicatedObject subclass or a "
        "StateMachine class"
    )
