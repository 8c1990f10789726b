"""The plugin host: loads plugins by entry point, enforces tiers, builds components.

Plugins are found in the ``raftmw`` entry point group, built-in ones too (see
``pyproject.toml``), and registered with a pluggy ``PluginManager("raftmw")`` in this order:

1. Blocked names (``plugins.blocked`` in settings, ``--plugin no:NAME``) are blocked with
   ``set_blocked`` before anything loads. Blocking an *essential* plugin is an error.
2. Every entry point loads; an *optional* plugin is registered only when named in
   ``plugins.enabled`` (or ``--plugin NAME``). A plugin that fails to import stops the start
   with its name and the error.
3. ``check_pending()``: a hook implementation whose name matches no hookspec (a typo) is an
   error naming it.

A plugin module says its tier with ``RAFTMW_TIER = "essential" | "default" | "optional"``
(default: ``"default"``) and may set ``RAFTMW_VERSION``; otherwise the distribution's
version is shown.

Factory hooks are resolved by ``build``: implementations are asked in pluggy's call order
and the first non-None answer wins, as ``firstresult`` says; two answers at the same
priority class (tryfirst / normal / trylast) are an error naming both plugins, so an
ambiguous installation fails at start instead of depending on registration order.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy

from framework import hooks
from framework.entry_points import InstalledEntryPoint, installed
from framework.seams import SEAMS

__all__ = ["PluginError", "PluginHost", "PluginInfo", "Tier"]

log = logging.getLogger("raftmw.plugins")

ENTRY_POINT_GROUP = "raftmw"


class PluginError(Exception):
    """A plugin cannot be loaded, is misconfigured, or failed to build its component."""


class Tier(enum.Enum):
    ESSENTIAL = "essential"
    """Always loaded; cannot be blocked (the legacy implementations every seam falls back to)."""
    DEFAULT = "default"
    """Loaded unless blocked."""
    OPTIONAL = "optional"
    """Loaded only when enabled by name."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginInfo:
    name: str
    tier: Tier
    version: str
    module: str
    flags: tuple[str, ...]
    seams: tuple[str, ...]
    hooks: tuple[str, ...]
    loaded: bool
    """False for an optional plugin that was not enabled or a blocked one."""


def _priority(impl: pluggy.HookImpl) -> int:
    if impl.tryfirst:
        return 0
    if impl.trylast:
        return 2
    return 1


class PluginHost:
    def __init__(
        self,
        *,
        blocked: Iterable[str] = (),
        enabled: Iterable[str] = (),
        plugins: Sequence[tuple[str, object]] = (),
        entry_points: bool = True,
        installed_plugins: Sequence[InstalledEntryPoint] | None = None,
    ) -> None:
        """Load plugins.

        ``plugins`` registers extra (name, plugin object) pairs after the entry points, as
        tests and embedders do; ``entry_points=False`` skips discovery.
        ``installed_plugins``: the ``raftmw`` entry points, already found (a node finds them
        in a forked child: `framework.entry_points.installed_apart`); None reads them here.
        """
        self.pm = pluggy.PluginManager("raftmw")
        self.pm.add_hookspecs(hooks)
        self._blocked = set(blocked)
        self._enabled = set(enabled)
        self._infos: dict[str, PluginInfo] = {}
        for name in self._blocked:
            self.pm.set_blocked(name)
        candidates: list[tuple[str, object, str]] = []
        if entry_points:
            if installed_plugins is None:
                installed_plugins = installed([ENTRY_POINT_GROUP])[ENTRY_POINT_GROUP]
            candidates.extend((ep.name, ep, ep.version) for ep in installed_plugins)
        candidates.extend((name, obj, "") for name, obj in plugins)
        for name, source, version in candidates:
            self._load(name, source, version)
        unknown_blocked = self._blocked - set(self._infos)
        if unknown_blocked:
            raise PluginError(
                f"cannot block unknown plugin(s) {sorted(unknown_blocked)}; installed: "
                f"{sorted(self._infos)}"
            )
        unknown_enabled = self._enabled - set(self._infos)
        if unknown_enabled:
            raise PluginError(
                f"cannot enable unknown plugin(s) {sorted(unknown_enabled)}; installed: "
                f"{sorted(self._infos)}"
            )
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {exc.plugin!r}: {exc}") from None

    def _load(self, name: str, source: object, version: str) -> None:
        if isinstance(source, InstalledEntryPoint):
            try:
                plugin = source.load()
            except Exception as exc:
                if name in self._blocked:
                    self._remember(name, None, Tier.DEFAULT, version, loaded=False)
                    return
                raise PluginError(
                    f"plugin {name!r} ({source.value}) failed to load: {exc!r}"
                ) from exc
        else:
            plugin = source
        tier = _tier(name, plugin)
        if name in self._blocked:
            if tier is Tier.ESSENTIAL:
                raise PluginError(f"plugin {name!r} is essential and cannot be blocked")
            self._remember(name, plugin, tier, version, loaded=False)
            return
        if tier is Tier.OPTIONAL and name not in self._enabled:
            self._remember(name, plugin, tier, version, loaded=False)
            return
        try:
            self.pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"plugin {name!r} cannot be registered: {exc}") from None
        self._remember(name, plugin, tier, version, loaded=True)

    def _remember(
        self, name: str, plugin: object, tier: Tier, version: str, *, loaded: bool
    ) -> None:
        hook_names = (
            tuple(
                sorted(
                    attr
                    for attr in dir(plugin)
                    if attr.startswith("raftmw_") and callable(getattr(plugin, attr, None))
                )
            )
            if plugin is not None
            else ()
        )
        seams = tuple(
            h.removeprefix("raftmw_make_")
            for h in hook_names
            if h.startswith("raftmw_make_") and h.removeprefix("raftmw_make_") in SEAMS
        )
        declared = getattr(plugin, "RAFTMW_VERSION", None)
        self._infos[name] = PluginInfo(
            name=name,
            tier=tier,
            version=str(declared or version or "-"),
            module=plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__name__,
            flags=(),
            seams=seams,
            hooks=hook_names,
            loaded=loaded,
        )

    # == declarations ===========================================================================

    def declare_flags(self) -> Any:
        """All flags the loaded plugins declare, as a ``framework.flags.FlagRegistry``."""
        from framework.flags import FlagRegistry

        registry = FlagRegistry()
        for impl in self.pm.hook.raftmw_declare_flags.get_hookimpls():
            try:
                specs: Iterable[Any] = impl.function() or ()  # type: ignore[assignment]
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed to declare its flags: {exc!r}"
                ) from exc
            names = []
            for spec in specs:
                registry.declare(spec)
                names.append(spec.name)
            info = self._infos.get(impl.plugin_name)
            if info is not None:
                self._infos[impl.plugin_name] = dataclasses.replace(info, flags=tuple(names))
        return registry

    def validate_settings(self, settings: Any) -> list[str]:
        """Problems with the settings: a ``[plugin.<name>]`` table for a plugin that is not
        installed (a misspelt name would otherwise be silently ignored), then what each
        plugin's ``raftmw_validate_settings`` reports."""
        problems: list[str] = []
        for name in getattr(settings, "plugin", {}):
            if name not in self._infos:
                close = difflib.get_close_matches(name, list(self._infos), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(
                    f"settings table [plugin.{name}]: no installed plugin is named {name!r}"
                    f"{hint}; expected one of {sorted(self._infos)}"
                )
        for impl in self.pm.hook.raftmw_validate_settings.get_hookimpls():
            try:
                found: Iterable[str] = impl.function(settings=settings) or ()  # type: ignore[assignment]
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed to validate settings: {exc!r}"
                ) from exc
            problems.extend(f"{impl.plugin_name}: {p}" for p in found)
        return problems

    # == components ==============================================================================

    def build(self, seam: str, ctx: hooks.BuildContext, **kwargs: Any) -> tuple[Any, str]:
        """Build the component for ``seam``; returns it with the name of the plugin that
        built it. Raises ``PluginError`` naming the plugin when a factory raises, when no
        plugin provides the seam, or when two answer at the same priority."""
        if seam not in SEAMS:
            raise PluginError(f"unknown seam {seam!r}; seams are {list(SEAMS)}")
        caller = getattr(self.pm.hook, f"raftmw_make_{seam}")
        arguments = {"ctx": ctx, **kwargs}
        answers: list[tuple[int, str, Any]] = []
        for impl in reversed(caller.get_hookimpls()):  # pluggy's call order
            try:
                result = impl.function(**{a: arguments[a] for a in impl.argnames})
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed to build the {seam} component: {exc!r}"
                ) from exc
            if result is not None:
                answers.append((_priority(impl), impl.plugin_name, result))
        if not answers:
            raise PluginError(
                f"no plugin provides the {seam} component for flags "
                f"{ {k: v.value for k, v in ctx.flags.items()} }; is a plugin blocked?"
            )
        answers.sort(key=lambda a: a[0])
        top = [a for a in answers if a[0] == answers[0][0]]
        if len(top) > 1:
            raise PluginError(
                f"plugins {' and '.join(repr(a[1]) for a in top)} both provide the {seam} "
                "component at the same priority; block one (--plugin no:NAME)"
            )
        return answers[0][2], answers[0][1]

    # == observers ===============================================================================

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call an observer hook; an exception in a plugin is logged, never raised."""
        caller = getattr(self.pm.hook, hook)
        for impl in reversed(caller.get_hookimpls()):
            try:
                impl.function(**{a: kwargs[a] for a in impl.argnames})
            except Exception:
                log.exception("plugin %r failed in %s", impl.plugin_name, hook)

    def wrap_io(
        self, *, node_id: int, settings: Any, store: Any, transport: Any
    ) -> tuple[Any, Any]:
        """The node's log store and transport, each wrapped by every plugin that answers
        ``raftmw_wrap_log_store`` / ``raftmw_wrap_transport`` (in pluggy's call order)."""
        for hook, name in (("raftmw_wrap_log_store", "store"), ("raftmw_wrap_transport", "t")):
            for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
                inner = store if name == "store" else transport
                try:
                    wrapped = impl.function(
                        **{
                            a: {"node_id": node_id, "settings": settings, "inner": inner}[a]
                            for a in impl.argnames
                        }
                    )
                except Exception as exc:
                    raise PluginError(
                        f"plugin {impl.plugin_name!r} failed in {hook}: {exc!r}"
                    ) from exc
                if wrapped is not None:
                    if name == "store":
                        store = wrapped
                    else:
                        transport = wrapped
        return store, transport

    def answers(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """(plugin name, answer) of every implementation of ``hook`` that answers, in
        pluggy's call order; a plugin that raises is a ``PluginError`` naming it."""
        found: list[tuple[str, Any]] = []
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            try:
                answer = impl.function(**{a: kwargs[a] for a in impl.argnames})
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook}: {exc!r}") from exc
            if answer is not None:
                found.append((impl.plugin_name, answer))
        return found

    def add_cli(self, group: Any) -> None:
        for impl in self.pm.hook.raftmw_add_cli.get_hookimpls():
            try:
                impl.function(group=group)
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed to add commands: {exc!r}"
                ) from exc

    # == listing =================================================================================

    def plugins(self) -> list[PluginInfo]:
        return sorted(self._infos.values(), key=lambda i: (i.tier.value, i.name))

    @property
    def names(self) -> Mapping[str, PluginInfo]:
        return dict(self._infos)


def _tier(name: str, plugin: object) -> Tier:
    raw = getattr(plugin, "RAFTMW_TIER", "default")
    try:
        return Tier(raw)
    except ValueError:
        raise PluginError(
            f"plugin {name!r} has RAFTMW_TIER={raw!r}; expected 'essential', 'default' or "
            "'optional'"
        ) from None
