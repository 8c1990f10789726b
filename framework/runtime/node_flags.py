"""``NodeFlags``: one node's view of the feature flags and where each value comes from.

Layers, lowest to highest: plugin defaults, settings (defaults, profile, files,
environment, ``--flag``), the cluster's replicated state (``flags`` log entries, applied in
log order at the same index on every node, carried in snapshots), and node-local
overrides (break-glass). Overrides are kept in ``flag-overrides.json`` in the node's data
directory, written (temporary file, fsync, rename) before they take effect, so a node that
restarts, however it stopped, comes back with them until they are unset; a node without a
data directory (tests, the simulator) keeps them in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

import anyio
import msgspec

from framework.config import FlagValue, Settings
from framework.core import Entry, EntryKind
from framework.flags import (
    ClusterFlagState,
    Evaluation,
    FlagChange,
    FlagError,
    FlagLayer,
    FlagRegistry,
    RolloutWire,
    Source,
    decode_flag_change,
    evaluate_all,
    validate_layers,
)
from framework.flags import layers_from_settings as settings_layers
from framework.plugins import PluginError, PluginHost
from framework.runtime.components import SwapReport
from framework.storage.durable import remove_durably, replace_durably

__all__ = ["OVERRIDES_FILE", "NodeFlags", "OverridesFile", "settings_problems"]

OVERRIDES_FILE: Final = "flag-overrides.json"
"""Name of the node-local overrides file in a node's data directory."""
_OVERRIDES_MAX_BYTES: Final = 1 << 20
"""An overrides file is a few hundred bytes; anything past this is not one of ours."""

log = logging.getLogger("raftmw.flags")


def settings_problems(
    host: PluginHost, settings: Settings, *, registry: FlagRegistry | None = None
) -> list[str]:
    """What a node refuses to start with, beyond the settings' own checks: flags no plugin
    declares or with bad values, and each plugin's verdict on its ``[plugin.NAME]`` table.
    ``raftmw config check`` asks the same."""
    registry = host.declare_flags() if registry is None else registry
    problems = validate_layers(registry, settings_layers(settings))
    return problems + list(host.validate_settings(settings))


class _StoredOverrides(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: int
    overrides: dict[str, bool | RolloutWire]


class OverridesFile:
    """The node-local overrides on disk: read whole at start, replaced whole on each change.

    Blocking (a read, or a write with two fsyncs): call from a worker thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, FlagValue]:
        """The stored overrides ({} when there is no file); `FlagError` naming the file if
        it is not one this node wrote."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(_OVERRIDES_MAX_BYTES + 1)
        except FileNotFoundError:
            return {}
        fix = f"expected the overrides this node wrote; remove {self.path} to drop them"
        if len(data) > _OVERRIDES_MAX_BYTES:
            raise FlagError(
                f"flag overrides file {self.path} is larger than {_OVERRIDES_MAX_BYTES} "
                f"bytes; {fix}"
            )
        try:
            stored = msgspec.json.decode(data, type=_StoredOverrides)
        except msgspec.DecodeError as exc:
            raise FlagError(f"flag overrides file {self.path} is not valid: {exc}; {fix}") from None
        if stored.version != 1:
            raise FlagError(
                f"flag overrides file {self.path} has version {stored.version}; expected 1"
            )
        return {
            k: v.to_rollout() if isinstance(v, RolloutWire) else v
            for k, v in stored.overrides.items()
        }

    def save(self, overrides: Mapping[str, FlagValue]) -> None:
        """Replace the file with ``overrides`` (removes it when empty), durably."""
        if not overrides:
            remove_durably(self.path)
            return
        stored = _StoredOverrides(
            version=1,
            overrides={
                k: v if isinstance(v, bool) else RolloutWire.from_rollout(v)
                for k, v in sorted(overrides.items())
            },
        )
        replace_durably(self.path, msgspec.json.encode(stored))


class NodeFlags:
    def __init__(
        self,
        host: PluginHost,
        *,
        node_id: int,
        settings: Settings,
        data_dir: Path | None = None,
        overrides_file: OverridesFile | None = None,
    ) -> None:
        """``data_dir``: where the overrides are kept (`OVERRIDES_FILE`); or give the
        ``overrides_file`` itself; neither keeps them in memory."""
        self.node_id = node_id
        self._host = host
        self.registry: FlagRegistry = host.declare_flags()
        self._settings_layers = settings_layers(settings)
        problems = settings_problems(host, settings, registry=self.registry)
        if problems:
            raise PluginError("bad flag settings: " + "; ".join(problems))
        self.cluster = ClusterFlagState()
        self.overrides: dict[str, FlagValue] = {}
        self.current: dict[str, Evaluation] = {}
        if overrides_file is None and data_dir is not None:
            overrides_file = OverridesFile(data_dir / OVERRIDES_FILE)
        self._overrides_file = overrides_file
        self.evaluated_index = 0
        """The cluster flag index the current evaluation reflects."""
        self.last_swaps: list[dict[str, object]] = []
        """What the swaps of the last evaluation did (empty: none was needed)."""

    # -- the replicated layer ----------------------------------------------------------------

    def replay_committed(self, entries: Iterable[Entry], commit: int) -> None:
        """Apply committed ``flags`` entries found in the stored log at start."""
        for entry in entries:
            if entry.index > commit:
                break
            if entry.kind is EntryKind.FLAGS:
                self.apply_entry(entry, notify=False)

    def apply_entry(self, entry: Entry, *, notify: bool = True) -> object:
        """Apply one committed ``flags`` entry (idempotent: already-applied indexes are
        skipped). Returns what the writer of the entry is told."""
        if entry.index <= self.cluster.applied_index:
            return None
        try:
            change = decode_flag_change(entry.data)
        except FlagError as exc:
            # Deterministic on every node: the entry is recorded as a no-op change.
            log.error(
                "node %d: flags entry %d is not a flag change: %s", self.node_id, entry.index, exc
            )
            change = FlagChange(reason=f"undecodable entry: {exc}")
        self.cluster.apply(change, entry.index)
        record = change.migration
        if record is not None:
            refused = self.cluster.migrations.refusal(entry.index)
            step = record.step + 1 if record.step >= 0 else 0
            if refused is not None:
                log.warning(
                    "node %d: migration %s: %s (entry %d) refused: %s",
                    self.node_id,
                    record.migration,
                    record.event,
                    entry.index,
                    refused,
                )
            else:
                log.info(
                    "node %d: migration %s: %s (step %d) at index %d %s",
                    self.node_id,
                    record.migration,
                    record.event,
                    step,
                    entry.index,
                    record.detail[:200],
                )
                if notify:
                    self._host.notify(
                        "raftmw_on_migration_event",
                        node_id=self.node_id,
                        migration=record.migration,
                        event=record.event,
                        step=step,
                        log_index=entry.index,
                        detail=record.detail,
                    )
        return None

    def migration_summary(self) -> dict[str, object] | None:
        """The running migration as this node applied it (None: none runs)."""
        active = self.cluster.migrations.active
        if active is None:
            return None
        return {
            "id": active.migration,
            "step": active.current_step + 1,
            "steps": active.start.steps,
            "gate_passed": active.gate_passed,
            "paused": active.paused,
        }

    def restore(self, data: bytes) -> None:
        """Take the cluster's flag state from a snapshot. The caller re-evaluates (and swaps)
        afterwards: a follower brought up to date by InstallSnapshot must run what the
        restored state says, not what it ran before."""
        self.cluster = ClusterFlagState.from_bytes(data) if data else ClusterFlagState()

    def snapshot(self) -> bytes:
        return self.cluster.to_bytes()

    # -- node-local overrides ----------------------------------------------------------------

    def load_overrides(self) -> None:
        """Read the overrides kept in the data directory (blocking: a worker thread).

        An override of a flag no installed plugin declares is kept (it is the operator's,
        and the plugin may come back) and logged; evaluation never asks for it.
        """
        if self._overrides_file is None:
            return
        stored = self._overrides_file.load()
        problems = validate_layers(self.registry, [self._override_layer(stored)])
        for problem in problems:
            log.warning("node %d: kept override: %s", self.node_id, problem)
        self.overrides = stored

    async def set_overrides(self, values: Mapping[str, FlagValue]) -> None:
        """Validate, persist, then apply (nothing changes if any name or value is bad)."""
        for name in values:
            self.registry.get(name)  # UnknownFlag names the closest known flag
        problems = validate_layers(self.registry, [self._override_layer(values)])
        if problems:
            raise FlagError("; ".join(problems))
        await self._store({**self.overrides, **values})

    async def unset_overrides(self, names: Iterable[str]) -> None:
        names = set(names)
        await self._store({k: v for k, v in self.overrides.items() if k not in names})

    async def _store(self, overrides: dict[str, FlagValue]) -> None:
        if self._overrides_file is not None and overrides != self.overrides:
            await anyio.to_thread.run_sync(self._overrides_file.save, overrides)
        self.overrides = overrides

    def _override_layer(self, values: Mapping[str, FlagValue]) -> FlagLayer:
        return FlagLayer(
            source=Source.OVERRIDE,
            values=dict(values),
            origins=dict.fromkeys(values, f"node {self.node_id} override"),
        )

    # -- evaluation ----------------------------------------------------------------------------

    def layers(self) -> list[FlagLayer]:
        layers = [*self._settings_layers, self.cluster.layer()]
        if self.overrides:
            layers.append(self._override_layer(self.overrides))
        return layers

    def evaluate(self) -> dict[str, Evaluation]:
        """Evaluate every declared flag; remembers the result as ``current``."""
        self.current = evaluate_all(self.registry, self.node_id, self.layers())
        self.evaluated_index = self.cluster.applied_index
        self.last_swaps = []
        return self.current

    def record_swaps(self, reports: Iterable[SwapReport]) -> None:
        """The swaps the last evaluation caused, for `outcome`."""
        self.last_swaps = [
            {"slot": r.slot, "old": r.old, "new": r.new, "ok": r.ok, "error": r.error}
            for r in reports
        ]

    def missing(self) -> list[str]:
        """Flags the cluster sets that no plugin installed here declares."""
        return sorted(name for name in self.cluster.values() if name not in self.registry)

    def outcome(self) -> dict[str, object]:
        """What this node made of the cluster's flag changes so far: the index its running
        plugins reflect, the swaps that evaluation did (each ok or with its error), and the
        flags it cannot run for want of their plugin. ``raftmw flags set`` waits on it."""
        return {
            "applied_index": self.cluster.applied_index,
            "evaluated_index": self.evaluated_index,
            "swaps": list(self.last_swaps),
            "missing": self.missing(),
        }

    def changed(self, before: Mapping[str, Evaluation]) -> list[Evaluation]:
        """Flags whose value differs between ``before`` and ``current``."""
        return [
            ev
            for name, ev in self.current.items()
            if name not in before or before[name].value != ev.value
        ]
