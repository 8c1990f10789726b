"""Cluster-wide flag changes: `FlagChange` (one ``flags`` log entry), its wire form, the
checks made before proposing one (`validate_change`, `dependency_problems`) and
`ClusterFlagState`, the replicated state that committed changes build, with its snapshot.

A change is atomic however many flags it touches and every node switches at the same log
index. Validation against the registry happens before proposing, never while applying: a
node missing a plugin must apply the same entries to the same state as its peers, so
`ClusterFlagState.apply` stores names it does not know and evaluation never asks for them.
Rollback is just another change. See `framework.flags` for the whole theory.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Annotated, Final

import msgspec

from framework.canonical_msgpack import encode_canonical
from framework.config import FlagValue, Rollout
from framework.flag_evaluation import FlagLayer, Source, is_node_id, value_problems
from framework.flag_registry import FlagError, FlagRegistry, short_repr, unknown_name
from framework.migration_journal import (
    JournalSnapshot,
    MigrationEvent,
    MigrationJournal,
    MigrationRecord,
)

__all__ = [
    "HISTORY_LIMIT",
    "ClusterFlagState",
    "FlagChange",
    "RolloutWire",
    "decode_flag_change",
    "dependency_problems",
    "encode_flag_change",
    "validate_change",
]

# How many applied changes `ClusterFlagState` remembers (for `raftmw flags history`).
HISTORY_LIMIT: Final = 1000


# --------------------------------------------------------------------------- cluster changes

_NodeId = Annotated[int, msgspec.Meta(ge=0)]


class RolloutWire(msgspec.Struct, frozen=True):
    """`framework.config.Rollout` as it travels in the log and in snapshots."""

    enabled: bool = True
    percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 100.0
    include: tuple[_NodeId, ...] = ()
    exclude: tuple[_NodeId, ...] = ()

    @classmethod
    def from_rollout(cls, rollout: Rollout) -> RolloutWire:
        return cls(
            enabled=rollout.enabled,
            percent=_same_number(rollout.percent),
            include=_same_ids(rollout.include),
            exclude=_same_ids(rollout.exclude),
        )

    def to_rollout(self) -> Rollout:
        return Rollout(
            enabled=self.enabled,
            percent=_same_number(self.percent),
            include=_same_ids(self.include),
            exclude=_same_ids(self.exclude),
        )


# Converting only what is sure to convert: a hand-made, unvalidated wire value (25 where a
# float belongs, a list for a tuple) must apply to the same state, and encode to the same
# bytes, as the decoded entry every other node applies; anything stranger passes through
# untouched, to be applied without raising and evaluated as ERROR.
def _same_number(value: float) -> float:
    return float(value) if type(value) is int else value


def _same_ids(ids: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(ids) if isinstance(ids, list) else ids


# Unknown struct fields are ignored when decoding (msgspec's default), not refused: during
# a rolling upgrade an older node must still apply what a newer leader proposed.


class FlagChange(msgspec.Struct, frozen=True):
    """One ``flags`` log entry: applied atomically at its log index (unset, then set).

    ``migration`` records a staged-migration event in the same entry (see
    ``framework.migration_journal``): a step's cohort change and its record commit together,
    and a refused record refuses the whole change."""

    set: dict[str, bool | RolloutWire] = msgspec.field(default_factory=dict)
    unset: list[str] = msgspec.field(default_factory=list)
    reason: str = ""  # the operator's note, kept in the history
    migration: MigrationRecord | None = None


_CHANGE_DECODER: Final = msgspec.msgpack.Decoder(FlagChange)


def encode_flag_change(change: FlagChange) -> bytes:
    return encode_canonical(change)


def decode_flag_change(data: bytes) -> FlagChange:
    """The change in a ``flags`` entry; `FlagError` naming the problem if it is not one."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FlagError(f"flag change entry is {type(data).__name__}, not bytes")
    try:
        return _CHANGE_DECODER.decode(data)
    except msgspec.DecodeError as error:  # ValidationError is a DecodeError
        raise FlagError(f"flag change entry ({len(data)} bytes) is not valid: {error}") from None


# Anything but a rollout passes through both ways: a bool as it is, and a hand-made bad
# value too, so that `ClusterFlagState.apply` stores it instead of raising (see above).
def _to_value(wire: bool | RolloutWire) -> FlagValue:
    return wire.to_rollout() if isinstance(wire, RolloutWire) else wire


def _to_wire(value: FlagValue) -> bool | RolloutWire:
    return RolloutWire.from_rollout(value) if isinstance(value, Rollout) else value


def validate_change(
    registry: FlagRegistry, change: FlagChange, *, state: ClusterFlagState | None = None
) -> list[str]:
    """Problems to refuse proposing ``change`` with (apply itself never refuses).

    Unsetting an undeclared name is allowed when ``state`` holds it: that is how a flag
    left behind by a removed plugin is cleaned up.
    """
    known = registry.names()
    problems: list[str] = []
    if not change.set and not change.unset and change.migration is None:
        problems.append("the change sets and unsets nothing")
    if change.migration is not None:
        journal = state.migrations if state is not None else MigrationJournal()
        problem = journal.problem(change.migration)
        if problem is not None:
            problems.append(problem)
        for name in change.migration.targets:
            if name not in registry:
                problems.append(unknown_name(name, known, what="cannot migrate"))
    for name, wire in change.set.items():
        if name not in registry:
            problems.append(unknown_name(name, known, what="cannot set"))
            continue
        problems += value_problems(f"flag {name!r}", _to_value(wire))
    for name in change.unset:
        if name in change.set:
            problems.append(f"flag {name!r} is both set and unset; expected one or the other")
        elif name not in registry and not (state is not None and name in state.values()):
            problems.append(unknown_name(name, known, what="cannot unset"))
    if not problems and (change.set or change.unset):
        after: dict[str, FlagValue] = dict(state.values()) if state is not None else {}
        for name in change.unset:
            after.pop(name, None)
        after.update((name, _to_value(wire)) for name, wire in change.set.items())
        touched = {*change.set, *change.unset}
        problems += [
            problem for names, problem in dependency_problems(registry, after) if touched & names
        ]
    return problems


def _may_be_on(value: FlagValue | None) -> bool:
    if isinstance(value, Rollout):
        return value.enabled and (value.percent > 0 or bool(value.include))
    return value is True


def _surely_on(value: FlagValue | None) -> bool:
    if isinstance(value, Rollout):
        return value.enabled and value.percent >= 100 and not value.exclude
    return value is True


def dependency_problems(
    registry: FlagRegistry, values: Mapping[str, FlagValue]
) -> list[tuple[frozenset[str], str]]:
    """Declared ``requires`` and ``conflicts`` that ``values`` (the cluster's flags, unset
    ones at their plugin default) break, each with the flags it involves.

    A rollout is judged for every node it may reach: a flag that may be on somewhere needs
    each flag it requires on everywhere, and must not meet a conflicting flag that may be on
    somewhere (the nodes a percentage picks differ per flag).
    """

    def value(name: str) -> FlagValue | None:
        if name in values:
            return values[name]
        return registry.get(name).default if name in registry else None

    problems: list[tuple[frozenset[str], str]] = []
    conflicting: set[frozenset[str]] = set()
    for spec in registry.specs():
        if not _may_be_on(value(spec.name)):
            continue
        for needed in spec.requires:
            if needed not in registry:
                problems.append(
                    (
                        frozenset({spec.name, needed}),
                        f"flag {spec.name!r} requires flag {needed!r}, which no installed "
                        f"plugin declares; expected plugin {spec.owner!r}'s dependency installed",
                    )
                )
            elif not _surely_on(value(needed)):
                problems.append(
                    (
                        frozenset({spec.name, needed}),
                        f"flag {spec.name!r} requires flag {needed!r} on wherever it is on, "
                        f"but {needed!r} is {short_repr.repr(value(needed))}; expected "
                        f"{needed}=on in the same change or before it",
                    )
                )
        for other in spec.conflicts:
            pair = frozenset({spec.name, other})
            if _may_be_on(value(other)) and pair not in conflicting:
                conflicting.add(pair)  # declared on both sides: reported once
                problems.append(
                    (
                        pair,
                        f"flags {spec.name!r} and {other!r} conflict (declared by "
                        f"{spec.owner!r}) and both may be on; expected at most one of them on",
                    )
                )
    return problems


class _StoredFlag(msgspec.Struct, frozen=True):
    value: bool | RolloutWire
    log_index: int


class _Snapshot(msgspec.Struct, frozen=True):
    version: int
    applied_index: int
    flags: dict[str, _StoredFlag]
    history: list[tuple[int, FlagChange]]
    migrations: JournalSnapshot | None = None


_SNAPSHOT_VERSION: Final = 1
_SNAPSHOT_DECODER: Final = msgspec.msgpack.Decoder(_Snapshot)


class ClusterFlagState:
    """The replicated flag state: committed `FlagChange` entries applied in log order."""

    __slots__ = ("_applied_index", "_flags", "_history", "migrations")

    def __init__(self) -> None:
        self._applied_index = 0
        self._flags: dict[str, tuple[FlagValue, int]] = {}
        self._history: deque[tuple[int, FlagChange]] = deque(maxlen=HISTORY_LIMIT)
        self.migrations = MigrationJournal()
        """The staged-migration journal, fed by changes that carry a record."""

    @property
    def applied_index(self) -> int:
        """The log index of the last change applied (0: none)."""
        return self._applied_index

    def apply(self, change: FlagChange, log_index: int) -> None:
        """Apply a committed change at ``log_index``: unset its names, then set its values.

        Names no plugin here declares are stored like any other (see the module doc). A
        ``log_index`` not after the last one applied raises `FlagError`: applying out of
        order would make this node's state differ from its peers'.
        """
        if not is_node_id(log_index) or log_index <= self._applied_index:
            raise FlagError(
                f"flag change at log index {log_index!r} applied after log index "
                f"{self._applied_index}; expected changes in increasing log order"
            )
        if change.migration is not None:
            change = self._apply_migration(change, log_index)
        values = {name: _to_value(wire) for name, wire in change.set.items()}
        for name in change.unset:
            self._flags.pop(name, None)
        for name, value in values.items():
            self._flags[name] = (value, log_index)
        self._applied_index = log_index
        # The history keeps the change as decoded from the log would be, so that a state
        # fed hand-made changes snapshots to the same bytes as its peers' states.
        normal = FlagChange(
            set={name: _to_wire(value) for name, value in values.items()},
            unset=list(change.unset),
            reason=change.reason,
        )
        self._history.append((log_index, normal))

    def _apply_migration(self, change: FlagChange, log_index: int) -> FlagChange:
        """Feed the change's record to the journal; returns the flag change to apply.

        A refused record applies nothing (the history says why). A start captures, at its
        own index, the change that restores its target flags; a rollback applies exactly
        that change, whatever its entry's own set/unset say, so every node restores the
        same state."""
        record = change.migration
        assert record is not None
        restore = b""
        if record.event == MigrationEvent.START:
            restore = encode_flag_change(self.restore_change(record.targets))
        rollback = self.migrations.active if record.event == MigrationEvent.ROLLBACK else None
        refused = self.migrations.apply(record, log_index, restore=restore)
        note = f"migration {record.migration!r} {record.event}"
        if record.step >= 0:
            note += f" step {record.step + 1}"
        if refused is not None:
            return FlagChange(reason=f"{note} refused: {refused}")
        if rollback is not None:
            try:
                back = decode_flag_change(rollback.restore)
            except FlagError as error:  # same bytes everywhere: every node does the same
                return FlagChange(reason=f"{note}: cannot restore the flags: {error}")
            return FlagChange(set=back.set, unset=back.unset, reason=f"{note}: {record.detail}")
        return FlagChange(set=change.set, unset=change.unset, reason=change.reason or note)

    def restore_change(self, names: Iterable[str]) -> FlagChange:
        """The change that puts ``names`` back to their current cluster values."""
        set_: dict[str, bool | RolloutWire] = {}
        unset: list[str] = []
        for name in sorted(set(names)):
            if name in self._flags:
                set_[name] = _to_wire(self._flags[name][0])
            else:
                unset.append(name)
        return FlagChange(set=set_, unset=unset, reason="restore")

    def values(self) -> dict[str, FlagValue]:
        return {name: value for name, (value, _) in sorted(self._flags.items())}

    def history(self) -> list[tuple[int, FlagChange]]:
        """The last `HISTORY_LIMIT` changes applied, oldest first."""
        return list(self._history)

    def layer(self) -> FlagLayer:
        flags = sorted(self._flags.items())
        return FlagLayer(
            source=Source.CLUSTER,
            values={name: value for name, (value, _) in flags},
            origins={name: f"cluster log index {index}" for name, (_, index) in flags},
            log_indexes={name: index for name, (_, index) in flags},
        )

    def to_bytes(self) -> bytes:
        """The state as msgpack, for the state machine's snapshot (same state, same bytes)."""
        return encode_canonical(
            _Snapshot(
                version=_SNAPSHOT_VERSION,
                applied_index=self._applied_index,
                flags={
                    name: _StoredFlag(value=_to_wire(value), log_index=index)
                    for name, (value, index) in self._flags.items()
                },
                history=list(self._history),
                migrations=self.migrations.to_wire(),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ClusterFlagState:
        """A state from `to_bytes` output; `FlagError` naming the problem otherwise."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise FlagError(f"flag state snapshot is {type(data).__name__}, not bytes")
        try:
            snapshot = _SNAPSHOT_DECODER.decode(data)
        except msgspec.DecodeError as error:
            raise FlagError(
                f"flag state snapshot ({len(data)} bytes) is not valid: {error}"
            ) from None
        problem = _snapshot_problem(snapshot)
        if problem is not None:
            raise FlagError(f"flag state snapshot is not consistent: {problem}")
        state = cls()
        state._applied_index = snapshot.applied_index
        state._flags = {
            name: (_to_value(stored.value), stored.log_index)
            for name, stored in snapshot.flags.items()
        }
        state._history.extend(snapshot.history)
        if snapshot.migrations is not None:
            try:
                state.migrations = MigrationJournal.from_wire(
                    snapshot.migrations, snapshot.applied_index
                )
            except ValueError as error:
                raise FlagError(f"flag state snapshot is not consistent: {error}") from None
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClusterFlagState):
            return NotImplemented
        return (self._applied_index, self._flags, list(self._history), self.migrations) == (
            other._applied_index,
            other._flags,
            list(other._history),
            other.migrations,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable: equal now, maybe not later

    def __repr__(self) -> str:
        return f"ClusterFlagState(applied_index={self._applied_index}, flags={self.values()!r})"


def _snapshot_problem(snapshot: _Snapshot) -> str | None:
    if snapshot.version != _SNAPSHOT_VERSION:
        return f"version {snapshot.version} is not {_SNAPSHOT_VERSION}"
    applied = snapshot.applied_index
    if applied < 0:
        return f"applied index {applied} is negative"
    for name, stored in snapshot.flags.items():
        if not 1 <= stored.log_index <= applied:
            return f"flag {name!r} set at log index {stored.log_index}, outside 1..{applied}"
    if len(snapshot.history) > HISTORY_LIMIT:
        return f"{len(snapshot.history)} history entries, more than {HISTORY_LIMIT}"
    indexes = [index for index, _ in snapshot.history]
    if any(a >= b for a, b in itertools.pairwise(indexes)):
        return f"history log indexes {indexes[:10]}... are not increasing"
    if indexes and (indexes[0] < 1 or indexes[-1] > applied):
        return f"history log indexes run outside 1..{applied}"
    return None
