"""The replicated migration journal (framework/migration_journal.py) inside the flag
state: one migration at a time, steps one by one, a refused record refuses its whole
entry, a rollback restores the pre-migration flags in one entry, and all of it travels in
snapshots."""

from __future__ import annotations

import pytest

from framework.flags import (
    ClusterFlagState,
    FlagChange,
    FlagRegistry,
    FlagSpec,
    RolloutWire,
    decode_flag_change,
    encode_flag_change,
    validate_change,
)
from framework.migration_journal import MigrationRecord

PLAN = "[migration]\n"  # the journal does not read plans; the controller does


def record(event: str, step: int = -1, migration: str = "m1", **more: object) -> MigrationRecord:
    if event == "start":
        more = {"steps": 2, "plan": PLAN, "targets": ["actors", "chaos"], **more}
    return MigrationRecord(migration=migration, event=event, step=step, **more)  # type: ignore[arg-type]


def canary(nodes: tuple[int, ...]) -> dict[str, bool | RolloutWire]:
    wire = RolloutWire(enabled=True, percent=0.0, include=nodes)
    return {"actors": wire, "chaos": wire}


class Log:
    """Changes applied at consecutive indexes, as committed entries would be."""

    def __init__(self) -> None:
        self.state = ClusterFlagState()
        self.index = 0

    def apply(self, change: FlagChange) -> int:
        self.index += 1
        # Through the wire format, as every node decodes it.
        self.state.apply(decode_flag_change(encode_flag_change(change)), self.index)
        return self.index

    def refusal(self, index: int) -> str | None:
        return self.state.migrations.refusal(index)


def test_a_rollback_restores_the_flags_of_the_start_in_one_entry() -> None:
    log = Log()
    log.apply(FlagChange(set={"actors": RolloutWire(percent=10.0)}))  # set before
    log.apply(FlagChange(migration=record("start")))
    before = log.state.values()
    log.apply(FlagChange(set=canary((2,)), migration=record("step", 0)))
    assert log.state.values() != before
    index = log.apply(FlagChange(migration=record("rollback", 0, ok=False, detail="p99 3x")))
    assert log.refusal(index) is None
    assert log.state.values() == before  # actors back to its rollout, chaos unset
    assert log.state.migrations.active is None
    (outcome,) = log.state.migrations.outcomes()
    assert (outcome.outcome, outcome.log_index, outcome.detail) == ("rollback", index, "p99 3x")
    last_index, last = log.state.history()[-1]
    assert last_index == index and last.unset == ["chaos"] and "actors" in last.set


def test_one_migration_at_a_time() -> None:
    log = Log()
    log.apply(FlagChange(migration=record("start")))
    index = log.apply(FlagChange(migration=record("start", migration="m2")))
    assert "'m1' is running" in (log.refusal(index) or "")
    assert log.state.migrations.active is not None
    assert log.state.migrations.active.migration == "m1"


def test_steps_go_one_by_one_and_a_refused_record_refuses_its_flags() -> None:
    log = Log()
    log.apply(FlagChange(migration=record("start")))
    skipped = log.apply(FlagChange(set=canary((1, 2, 3)), migration=record("step", 1)))
    assert "not the next step" in (log.refusal(skipped) or "")
    assert log.state.values() == {}  # the refused entry's flags were not applied
    log.apply(FlagChange(set=canary((2,)), migration=record("step", 0)))
    # A late duplicate of the same step (an old leader's) and a step before its gate: refused.
    again = log.apply(FlagChange(set=canary((2, 3)), migration=record("step", 0)))
    early = log.apply(FlagChange(set=canary((2, 3)), migration=record("step", 1)))
    assert "not the next step" in (log.refusal(again) or "")
    assert "gate has not passed" in (log.refusal(early) or "")
    assert log.state.values() == {k: v.to_rollout() for k, v in canary((2,)).items()}  # type: ignore[union-attr]
    log.apply(FlagChange(migration=record("verdict", 0)))
    twice = log.apply(FlagChange(migration=record("promote", 0)))
    assert "already passed" in (log.refusal(twice) or "")
    log.apply(FlagChange(set={"actors": True, "chaos": True}, migration=record("step", 1)))
    early_end = log.apply(FlagChange(migration=record("complete", 1)))
    assert "not at its last step" in (log.refusal(early_end) or "")
    log.apply(FlagChange(migration=record("promote", 1)))
    done = log.apply(FlagChange(migration=record("complete", 1)))
    assert log.refusal(done) is None and log.state.migrations.active is None
    assert log.state.values() == {"actors": True, "chaos": True}
    reused = log.apply(FlagChange(migration=record("start")))
    assert "used before" in (log.refusal(reused) or "")


def test_pause_and_resume_are_recorded_once_each() -> None:
    log = Log()
    log.apply(FlagChange(migration=record("start")))
    log.apply(FlagChange(migration=record("pause")))
    active = log.state.migrations.active
    assert active is not None and active.paused
    assert "already paused" in (log.refusal(log.apply(FlagChange(migration=record("pause")))) or "")
    log.apply(FlagChange(migration=record("resume")))
    active = log.state.migrations.active
    assert active is not None and not active.paused


def test_validation_before_proposing_names_the_problem() -> None:
    registry = FlagRegistry([FlagSpec(name="actors", default=False, description="", owner="t")])
    state = ClusterFlagState()
    assert validate_change(registry, FlagChange(migration=record("start")), state=state) == [
        "cannot migrate 'chaos' (declared flags: actors)"
    ]
    state.apply(FlagChange(migration=record("start", targets=["actors"])), 1)
    problems = validate_change(
        registry,
        FlagChange(migration=record("start", migration="m2", targets=["actors"])),
        state=state,
    )
    assert any("one migration at a time" in p for p in problems)
    bad_id = validate_change(registry, FlagChange(migration=record("pause", migration="no way")))
    assert any("migration id 'no way'" in p for p in bad_id)
    huge = validate_change(
        registry, FlagChange(migration=record("start", plan="x" * 70_000, targets=["actors"]))
    )
    assert any("more than 65536" in p for p in huge)


def test_the_journal_travels_in_snapshots_and_replays_to_the_same_state() -> None:
    log = Log()
    log.apply(FlagChange(migration=record("start")))
    log.apply(FlagChange(set=canary((2,)), migration=record("step", 0, at=12.5)))
    restored = ClusterFlagState.from_bytes(log.state.to_bytes())
    assert restored == log.state and restored.to_bytes() == log.state.to_bytes()
    active = restored.migrations.active
    assert active is not None and (active.current_step, active.step_at) == (0, 12.5)
    # The restored state goes on exactly like the original.
    index = log.apply(FlagChange(migration=record("rollback", 0)))
    restored.apply(FlagChange(migration=record("rollback", 0)), index)
    assert restored == log.state and restored.values() == {}


def test_a_snapshot_with_an_inconsistent_journal_is_refused() -> None:
    from framework.flags import FlagError

    log = Log()
    log.apply(FlagChange(migration=record("start")))
    data = log.state.to_bytes().replace(b"m1", b"  ")  # an id that is not an id
    with pytest.raises(FlagError, match="not consistent"):
        ClusterFlagState.from_bytes(data)


def test_a_rollback_that_cannot_restore_ends_the_migration_without_raising() -> None:
    import dataclasses

    log = Log()
    log.apply(FlagChange(migration=record("start")))
    log.apply(FlagChange(set=canary((2,)), migration=record("step", 0)))
    active = log.state.migrations.active
    assert active is not None
    log.state.migrations._active = dataclasses.replace(active, restore=b"\xc1 not msgpack")
    index = log.apply(FlagChange(migration=record("rollback", 0)))  # does not raise
    assert log.state.migrations.active is None
    assert "cannot restore the flags" in log.state.history()[-1][1].reason
    assert log.state.history()[-1][0] == index
