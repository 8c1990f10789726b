"""``NodeFlags``: one node's view of the feature flags and where each value comes from.

Layers, lowest to highest: plugin defaults, settings (defaults, profile, files,
environment, ``--flag``), the cluster's replicated state (``flags`` log entries, applied in
log order at the same index on every node, carried in snapshots), and node-local
overrides (break-glass, kept in memory: they end with the process).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from framework.config import FlagValue, Settings
from framework.core import Entry, EntryKind
from framework.flags import (
    ClusterFlagState,
    Evaluation,
    FlagChange,
    FlagError,
    FlagLayer,
    FlagRegistry,
    Source,
    decode_flag_change,
    evaluate_all,
    validate_layers,
)
from framework.flags import layers_from_settings as settings_layers
from framework.plugins import PluginError, PluginHost

__all__ = ["NodeFlags"]

log = logging.getLogger("raftmw.flags")


class NodeFlags:
    def __init__(self, host: PluginHost, *, node_id: int, settings: Settings) -> None:
        self.node_id = node_id
        self._host = host
        self.registry: FlagRegistry = host.declare_flags()
        self._settings_layers = settings_layers(settings)
        problems = validate_layers(self.registry, self._settings_layers)
        problems += host.validate_settings(settings)
        if problems:
            raise PluginError("bad flag settings: " + "; ".join(problems))
        self.cluster = ClusterFlagState()
        self.overrides: dict[str, FlagValue] = {}
        self.current: dict[str, Evaluation] = {}

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
        self.cluster = ClusterFlagState.from_bytes(data) if data else ClusterFlagState()

    def snapshot(self) -> bytes:
        return self.cluster.to_bytes()

    # -- node-local overrides ----------------------------------------------------------------

    def set_overrides(self, values: Mapping[str, FlagValue]) -> None:
        for name in values:
            self.registry.get(name)  # UnknownFlag names the closest known flag
        self.overrides.update(values)

    def unset_overrides(self, names: Iterable[str]) -> None:
        for name in names:
            self.overrides.pop(name, None)

    # -- evaluation ----------------------------------------------------------------------------

    def layers(self) -> list[FlagLayer]:
        layers = [*self._settings_layers, self.cluster.layer()]
        if self.overrides:
            layers.append(
                FlagLayer(
                    source=Source.OVERRIDE,
                    values=dict(self.overrides),
                    origins=dict.fromkeys(self.overrides, f"node {self.node_id} override"),
                )
            )
        return layers

    def evaluate(self) -> dict[str, Evaluation]:
        """Evaluate every declared flag; remembers the result as ``current``."""
        self.current = evaluate_all(self.registry, self.node_id, self.layers())
        return self.current

    def changed(self, before: Mapping[str, Evaluation]) -> list[Evaluation]:
        """Flags whose value differs between ``before`` and ``current``."""
        return [
            ev
            for name, ev in self.current.items()
            if name not in before or before[name].value != ev.value
        ]
