"""The migration journal: staged-migration records, replicated inside ``flags`` entries.

Theory of operation
-------------------
A staged migration (see ``migration/``) is driven by a controller on the leader, but its
state lives here, in the replicated log: every start, step, verdict, operator action and
rollback is a `MigrationRecord` carried by a ``FlagChange`` (its ``migration`` field) in one
``flags`` entry. So a step's cohort change and the record of that step are applied at the
same index on every node, a rollback restores the flags and ends the migration in one
entry, and the journal travels in snapshots with the flag state (``ClusterFlagState``).

`MigrationJournal.apply` folds records in log order and keeps the rules that must hold
whoever proposed a record and however leaders raced:

- one migration at a time: a ``start`` while another runs is refused;
- steps go one by one: ``step`` k is accepted only when step k-1's gate has passed (the
  first step after ``start``), so no step is applied twice and none is skipped, even when
  an old leader's late proposal commits after a new leader's;
- a ``verdict`` or ``promote`` closes the gate of the current step only, once;
- ``complete`` needs the last step's gate passed; ``rollback`` ends it at any point.

A refused record refuses its whole entry: ``ClusterFlagState`` then applies nothing of the
change (its flags included) and remembers why for the proposer (`refusal`). This is
deterministic, so every node refuses the same entries.

The journal does not interpret plans: the plan travels as TOML text in the ``start`` record
for any later leader to parse. This module is pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass
from typing import Final

import msgspec

__all__ = [
    "JOURNAL_LIMIT",
    "MAX_DETAIL_CHARS",
    "MAX_PLAN_BYTES",
    "MAX_STEPS",
    "ActiveMigration",
    "JournalSnapshot",
    "MigrationEvent",
    "MigrationJournal",
    "MigrationOutcome",
    "MigrationRecord",
]

JOURNAL_LIMIT: Final = 500
"""Records kept for ``raftmw migrate history`` (the active migration's start is always kept)."""
MAX_PLAN_BYTES: Final = 64 * 1024
MAX_DETAIL_CHARS: Final = 4096
MAX_STEPS: Final = 100
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", re.ASCII)


class MigrationEvent(enum.StrEnum):
    START = "start"
    STEP = "step"
    VERDICT = "verdict"
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    COMPLETE = "complete"


class MigrationRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One migration event, as it travels in a ``flags`` entry."""

    migration: str
    """The migration's id (unique per start)."""
    event: str
    step: int = -1
    """The step the record is about, from 0 (-1: none)."""
    steps: int = 0
    """``start``: how many steps the plan has."""
    plan: str = ""
    """``start``: the plan as TOML text."""
    targets: list[str] = msgspec.field(default_factory=list)
    """``start``: the flags the migration changes; their cluster values as of the start's
    log index are what a rollback restores."""
    ok: bool = True
    """``verdict``: the analysis passed."""
    detail: str = ""
    """The reason, or the measurements (JSON text)."""
    at: float = 0.0
    """The proposer's wall clock (Unix seconds): a gate's pause is timed from its step's."""
    by: str = ""
    """Who proposed it: ``controller@N`` or ``operator``."""


class MigrationOutcome(msgspec.Struct, frozen=True, kw_only=True):
    migration: str
    outcome: str
    """``complete`` or ``rollback``."""
    log_index: int
    step: int
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActiveMigration:
    """Where the running migration stands, as every node knows it."""

    start: MigrationRecord
    start_index: int
    current_step: int
    """The step whose cohort change was applied last (-1: none yet)."""
    step_at: float
    """``at`` of the current step's record (or the start's)."""
    gate_passed: bool
    paused: bool
    restore: bytes
    """The encoded ``FlagChange`` that puts the targets back as they were at the start."""

    @property
    def migration(self) -> str:
        return self.start.migration

    @property
    def next_step(self) -> int:
        """The step to apply next (== ``start.steps`` when every step is done)."""
        return self.current_step + 1


class _ActiveWire(msgspec.Struct, frozen=True):
    start: MigrationRecord
    start_index: int
    current_step: int
    step_at: float
    gate_passed: bool
    paused: bool
    restore: bytes


class JournalSnapshot(msgspec.Struct, frozen=True):
    active: _ActiveWire | None
    records: list[tuple[int, MigrationRecord]]
    outcomes: list[MigrationOutcome]
    refusals: list[tuple[int, str]]


_REFUSALS_KEPT: Final = 64


def record_problem(record: MigrationRecord) -> str | None:
    """What is malformed in ``record`` on its own (sizes, names), or None."""
    if not isinstance(record.migration, str) or not _ID_RE.fullmatch(record.migration):
        return (
            f"migration id {record.migration!r} is not 1-64 letters, digits or '_.:-' "
            "starting with a letter or digit"
        )
    try:
        MigrationEvent(record.event)
    except ValueError:
        return (
            f"migration event {record.event!r} is not one of "
            f"{', '.join(e.value for e in MigrationEvent)}"
        )
    if len(record.plan.encode()) > MAX_PLAN_BYTES:
        return f"the plan is {len(record.plan.encode())} bytes, more than {MAX_PLAN_BYTES}"
    if len(record.detail) > MAX_DETAIL_CHARS:
        return f"the detail is {len(record.detail)} characters, more than {MAX_DETAIL_CHARS}"
    if not -1 <= record.step < MAX_STEPS or not 0 <= record.steps <= MAX_STEPS:
        return f"step {record.step} of {record.steps} is outside 0..{MAX_STEPS - 1}"
    if len(record.targets) > 64:
        return f"the record names {len(record.targets)} flags, more than 64"
    return None


class MigrationJournal:
    """The replicated migration state: records applied in log order (see the module doc)."""

    __slots__ = ("_active", "_outcomes", "_records", "_refusals", "revision")

    def __init__(self) -> None:
        self.revision = 0
        """Counts records applied (refused ones too) by this instance: a cheap way for a
        reader to notice a change (local only: not replicated, not in snapshots)."""
        self._active: ActiveMigration | None = None
        self._records: deque[tuple[int, MigrationRecord]] = deque(maxlen=JOURNAL_LIMIT)
        self._outcomes: deque[MigrationOutcome] = deque(maxlen=JOURNAL_LIMIT)
        self._refusals: deque[tuple[int, str]] = deque(maxlen=_REFUSALS_KEPT)

    @property
    def active(self) -> ActiveMigration | None:
        return self._active

    def records(self) -> list[tuple[int, MigrationRecord]]:
        """The last `JOURNAL_LIMIT` accepted records, oldest first, plans left out."""
        return list(self._records)

    def outcomes(self) -> list[MigrationOutcome]:
        """How the last migrations ended, oldest first."""
        return list(self._outcomes)

    def refusal(self, log_index: int) -> str | None:
        """Why the entry at ``log_index`` was refused (for its proposer), if it was."""
        for index, reason in self._refusals:
            if index == log_index:
                return reason
        return None

    def problem(self, record: MigrationRecord) -> str | None:
        """Why ``record`` would be refused if applied now, or None (the same rules as apply:
        callers check before proposing, and apply checks again in log order)."""
        malformed = record_problem(record)
        if malformed is not None:
            return malformed
        event = MigrationEvent(record.event)
        active = self._active
        if event is MigrationEvent.START:
            if active is not None:
                return (
                    f"migration {active.migration!r} is running (step {active.current_step + 1}"
                    f" of {active.start.steps}); one migration at a time: abort it or wait"
                )
            if not 1 <= record.steps <= MAX_STEPS or not record.plan or not record.targets:
                return f"a start needs a plan of 1..{MAX_STEPS} steps and its target flags"
            if any(o.migration == record.migration for o in self._outcomes):
                return f"migration id {record.migration!r} was used before"
            return None
        if active is None:
            return f"no migration is running (the {event.value} was for {record.migration!r})"
        if record.migration != active.migration:
            return (
                f"{event.value} is for migration {record.migration!r}, but "
                f"{active.migration!r} is running"
            )
        if event is MigrationEvent.STEP:
            if record.step != active.next_step:
                return f"step {record.step + 1} is not the next step ({active.next_step + 1})"
            if active.current_step >= 0 and not active.gate_passed:
                return f"step {active.current_step + 1}'s gate has not passed"
            if record.step >= active.start.steps:
                return f"the plan has {active.start.steps} steps, not {record.step + 1}"
        elif event in (MigrationEvent.VERDICT, MigrationEvent.PROMOTE):
            if record.step != active.current_step or active.current_step < 0:
                return (
                    f"{event.value} for step {record.step + 1}, but the current step is "
                    f"{active.current_step + 1}"
                )
            if active.gate_passed:
                return f"step {record.step + 1}'s gate has already passed"
            if event is MigrationEvent.VERDICT and not record.ok:
                return "a failed verdict is recorded by its rollback"
        elif event is MigrationEvent.COMPLETE:
            if active.next_step != active.start.steps or not active.gate_passed:
                return "the migration is not at its last step with the gate passed"
        elif event is MigrationEvent.PAUSE and active.paused:
            return f"migration {active.migration!r} is already paused"
        elif event is MigrationEvent.RESUME and not active.paused:
            return f"migration {active.migration!r} is not paused"
        return None

    def apply(self, record: MigrationRecord, log_index: int, *, restore: bytes = b"") -> str | None:
        """Apply ``record`` committed at ``log_index``; returns why it was refused (then
        nothing changed but the remembered refusal), or None. ``restore`` (for a start) is
        the encoded change a rollback will apply."""
        self.revision += 1
        problem = self.problem(record)
        if problem is not None:
            self._refusals.append((log_index, problem))
            return problem
        event = MigrationEvent(record.event)
        active = self._active
        if event is MigrationEvent.START:
            self._active = ActiveMigration(
                start=record,
                start_index=log_index,
                current_step=-1,
                step_at=record.at,
                gate_passed=True,
                paused=False,
                restore=restore,
            )
        else:
            assert active is not None
            if event is MigrationEvent.STEP:
                self._active = _replace(
                    active, current_step=record.step, step_at=record.at, gate_passed=False
                )
            elif event in (MigrationEvent.VERDICT, MigrationEvent.PROMOTE):
                self._active = _replace(active, gate_passed=True)
            elif event is MigrationEvent.PAUSE:
                self._active = _replace(active, paused=True)
            elif event is MigrationEvent.RESUME:
                self._active = _replace(active, paused=False)
            else:  # COMPLETE, ROLLBACK
                self._active = None
                self._outcomes.append(
                    MigrationOutcome(
                        migration=record.migration,
                        outcome=event.value,
                        log_index=log_index,
                        step=active.current_step,
                        detail=record.detail,
                    )
                )
        # The journal keeps records without their plan (the active start keeps its own).
        self._records.append((log_index, _without_plan(record)))
        return None

    # -- snapshots ---------------------------------------------------------------------------

    def to_wire(self) -> JournalSnapshot:
        a = self._active
        return JournalSnapshot(
            active=None
            if a is None
            else _ActiveWire(
                start=a.start,
                start_index=a.start_index,
                current_step=a.current_step,
                step_at=a.step_at,
                gate_passed=a.gate_passed,
                paused=a.paused,
                restore=a.restore,
            ),
            records=list(self._records),
            outcomes=list(self._outcomes),
            refusals=list(self._refusals),
        )

    @classmethod
    def from_wire(cls, wire: JournalSnapshot, applied_index: int) -> MigrationJournal:
        """A journal from `to_wire`; ValueError naming what is inconsistent."""
        if len(wire.records) > JOURNAL_LIMIT or len(wire.outcomes) > JOURNAL_LIMIT:
            raise ValueError(f"more than {JOURNAL_LIMIT} migration records or outcomes")
        if len(wire.refusals) > _REFUSALS_KEPT:
            raise ValueError(f"more than {_REFUSALS_KEPT} migration refusals")
        for index, record in wire.records:
            problem = record_problem(record)
            if problem is not None or not 1 <= index <= applied_index:
                raise ValueError(f"migration record at {index}: {problem or 'index outside'}")
        journal = cls()
        if wire.active is not None:
            a = wire.active
            problem = record_problem(a.start)
            if problem is None and not -1 <= a.current_step < max(a.start.steps, 1):
                problem = f"current step {a.current_step} outside the plan's {a.start.steps}"
            if problem is None and not 1 <= a.start_index <= applied_index:
                problem = f"started at index {a.start_index}, outside 1..{applied_index}"
            if problem is None and len(a.restore) > MAX_PLAN_BYTES:
                problem = f"its restore change is {len(a.restore)} bytes"
            if problem is not None:
                raise ValueError(f"the active migration is not consistent: {problem}")
            journal._active = ActiveMigration(
                start=a.start,
                start_index=a.start_index,
                current_step=a.current_step,
                step_at=a.step_at,
                gate_passed=a.gate_passed,
                paused=a.paused,
                restore=a.restore,
            )
        journal._records.extend(wire.records)
        journal._outcomes.extend(wire.outcomes)
        journal._refusals.extend(wire.refusals)
        return journal

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MigrationJournal):
            return NotImplemented
        return self.to_wire() == other.to_wire()

    __hash__ = None  # type: ignore[assignment]  # mutable


def _replace(active: ActiveMigration, **changes: object) -> ActiveMigration:
    import dataclasses

    return dataclasses.replace(active, **changes)  # type: ignore[arg-type]


def _without_plan(record: MigrationRecord) -> MigrationRecord:
    return record if not record.plan else msgspec.structs.replace(record, plan="")
