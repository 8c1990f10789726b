"""The migration controller: a node service that drives the running migration while its
node leads.

Theory of operation
-------------------
Every node runs a controller; only the leader's acts, and it keeps nothing that matters
in memory. What it does next is read from the replicated journal (the running migration,
its plan as TOML, the current step, whether its gate passed, whether it is paused) and
from the replicated flag values (who is migrated, `migration.cohort.migrated_nodes`):

- gate passed, steps left: take the baseline first if the plan needs one (step 1 only),
  move leadership to a migrated node if this step would move the leader, else propose
  the step (its cohort's flag values and its record in one entry);
- gate passed, no steps left: propose ``complete``;
- gate open: wait out a pause (timed from the step record's wall clock, so a new leader
  waits only what is left), run the analysis (then a ``verdict``, or a ``rollback`` in one
  entry carrying the failing measurement), or wait for an operator's ``promote``.

One pass does one of these and returns; the controller then re-reads the state. A pass is
cancelled as soon as the state it started from changes (leadership lost, an operator's
pause or abort committed, a step applied), so a stale pass never proposes on old facts,
and the journal refuses any record out of turn anyway. A new leader's first pass is the
same as any other: it resumes the current step where the log says it is, repeating an
interrupted analysis from its first window (never skipping it) and never re-applying a
step whose record committed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import msgspec
import tomli_w
from anyio.abc import TaskStatus

from framework.client import KVClient
from framework.errors import RaftError
from framework.flags import FlagChange
from framework.migration_journal import ActiveMigration, MigrationEvent, MigrationRecord
from framework.services import ServiceContext, ServiceError
from migration.analysis import Measurement, Metric, cohort_value, measure, node_values
from migration.cohort import migrated_nodes, plan_step, step_change
from migration.plan import Analysis, Plan, PlanError, parse_plan

__all__ = ["MigrationController"]

log = logging.getLogger("raftmw.migration")

_RETRY_AFTER = 0.5
"""Seconds before a pass that failed (no quorum, a peer away) is tried again."""
_TRANSFER_ATTEMPTS = 2
"""Failed leadership transfers before a step moves the leader in place."""
_ACTIONS = ("check", "start", "pause", "resume", "promote", "abort", "status", "history")


class _Key(msgspec.Struct, frozen=True):
    leader: bool
    migration: str
    step: int
    gate_passed: bool
    paused: bool
    revision: int


class MigrationController:
    name = "migration"

    def __init__(
        self,
        ctx: ServiceContext,
        metrics: Mapping[str, Metric],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx = ctx
        self.metrics = dict(metrics)
        self.clock = clock
        self.live: dict[str, Any] = {"phase": "idle"}
        self._plans: dict[str, Plan] = {}
        self._settings_written: str | None = None
        self._failed_transfers: dict[tuple[str, int], int] = {}
        """Leadership transfers that did not complete, per (migration, step)."""

    # -- the service ---------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            key = self._key()
            await self._write_final_settings()
            active = self.ctx.cluster_flags.migrations.active
            if key.leader and active is not None and not active.paused:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pass, active, tg.cancel_scope)
                    tg.start_soon(self._cancel_on_change, key, tg.cancel_scope)
            else:
                self.live = {"phase": "paused" if active is not None else "idle"}
                while self._key() == key:
                    await self.ctx.wait_changed()

    def _key(self) -> _Key:
        journal = self.ctx.cluster_flags.migrations
        active = journal.active
        return _Key(
            leader=self.ctx.is_leader(),
            migration=active.migration if active else "",
            step=active.current_step if active else -2,
            gate_passed=active.gate_passed if active else False,
            paused=active.paused if active else False,
            revision=journal.revision,
        )

    async def _cancel_on_change(self, key: _Key, scope: anyio.CancelScope) -> None:
        while self._key() == key:
            await self.ctx.wait_changed()
        scope.cancel()

    async def _pass(self, active: ActiveMigration, scope: anyio.CancelScope) -> None:
        try:
            await self._drive(active)
        except Exception as exc:  # no quorum, a timeout, a refusal: read the log again
            log.warning("node %d: migration pass failed: %s", self.ctx.node_id, exc)
            self.live = {**self.live, "last_error": str(exc)}
            await anyio.sleep(_RETRY_AFTER)
        scope.cancel()

    # -- one pass ------------------------------------------------------------------------------

    def _plan(self, active: ActiveMigration) -> Plan:
        plan = self._plans.get(active.migration)
        if plan is None:
            plan = parse_plan(
                active.start.plan,
                flags=self.ctx.registry.names(),
                metrics=self.metrics,
                now=lambda: active.start.at,
            )
            self._plans = {active.migration: plan}
        return plan

    def _record(
        self, active: ActiveMigration, event: MigrationEvent, **fields: Any
    ) -> MigrationRecord:
        return MigrationRecord(
            migration=active.migration,
            event=event.value,
            at=self.clock(),
            by=f"controller@{self.ctx.node_id}",
            **fields,
        )

    async def _drive(self, active: ActiveMigration) -> None:
        try:
            plan = self._plan(active)
        except PlanError as error:  # a node missing the plan's plugins cannot drive it
            await self._propose(
                FlagChange(
                    migration=self._record(
                        active,
                        MigrationEvent.ROLLBACK,
                        step=active.current_step,
                        detail=f"the plan no longer validates on node {self.ctx.node_id}: {error}",
                    )
                )
            )
            return
        voters = sorted(self.ctx.members)
        migrated = migrated_nodes(self.ctx.cluster_flags.values(), plan.target, voters)
        if active.gate_passed:
            await self._next_step(active, plan, voters, migrated)
        else:
            await self._gate(active, plan, voters, migrated)

    async def _next_step(
        self, active: ActiveMigration, plan: Plan, voters: list[int], migrated: frozenset[int]
    ) -> None:
        k = active.next_step
        if k >= len(plan.steps):
            detail = json.dumps(
                {"write_settings": plan.write_settings, "target": dict(plan.target)}
            )
            record = self._record(active, MigrationEvent.COMPLETE, step=k - 1, detail=detail)
            await self._propose(FlagChange(migration=record))
            return
        step = plan.steps[k]
        baseline: dict[str, float | None] | None = None
        if k == 0 and plan.needs_baseline:
            interval = max(a.interval for a in plan.analyses.values() if a.needs_baseline)
            self.live = {"phase": "baseline", "step": 1, "interval": interval}
            values = await self._window(voters, interval)
            baseline = {name: cohort_value(values, voters, name) for name in self._analysed(plan)}
        decided = plan_step(step.cohort, voters=voters, leader=self.ctx.node_id, migrated=migrated)
        attempt = (active.migration, k)
        in_place = False
        if decided.transfer_to is not None:
            if self._failed_transfers.get(attempt, 0) < _TRANSFER_ATTEMPTS:
                self.live = {"phase": "transfer", "step": k + 1, "to": decided.transfer_to}
                log.info(
                    "node %d: step %d moves the leader; leadership goes to migrated node %d first",
                    self.ctx.node_id,
                    k + 1,
                    decided.transfer_to,
                )
                try:
                    await self.ctx.transfer_leader(decided.transfer_to)
                except Exception:
                    self._failed_transfers[attempt] = self._failed_transfers.get(attempt, 0) + 1
                    raise
                return
            # A migrated node that cannot take over (too slow to catch up, say) must not
            # hold the migration forever: the leader switches in place, and says so.
            log.warning(
                "node %d: leadership did not move to node %d in %d attempts; step %d moves "
                "the leader in place",
                self.ctx.node_id,
                decided.transfer_to,
                _TRANSFER_ATTEMPTS,
                k + 1,
            )
            in_place = True
        change = step_change(plan.target, decided.nodes, voters)
        facts: dict[str, Any] = {"nodes": sorted(decided.nodes), "leader_in_place": in_place}
        if baseline is not None:
            facts["baseline"] = baseline  # a new leader judges against the same one
        detail = json.dumps(facts)
        record = self._record(active, MigrationEvent.STEP, step=k, detail=detail)
        self.live = {"phase": "step", "step": k + 1, "nodes": sorted(decided.nodes)}
        await self._propose(FlagChange(set=change.set, migration=record))

    async def _gate(
        self, active: ActiveMigration, plan: Plan, voters: list[int], migrated: frozenset[int]
    ) -> None:
        k = active.current_step
        gate = plan.steps[k].gate
        if gate.pause is not None:
            until = active.step_at + gate.pause
            self.live = {"phase": "pause", "step": k + 1, "until": until}
            # Timed from the step's record: a new leader waits only what is left.
            await anyio.sleep(max(0.0, until - self.clock()))
            record = self._record(
                active, MigrationEvent.VERDICT, step=k, detail=f"pause of {gate.pause:g}s elapsed"
            )
        elif gate.analysis is not None:
            analysis = plan.analyses[gate.analysis]
            measurements = await self._analyse(analysis, active, voters, migrated)
            failed = [m for m in measurements if not m.ok]
            detail = json.dumps(
                {
                    "analysis": analysis.name,
                    "migrated": sorted(migrated),
                    "failed": len(failed),
                    "measurements": [m.to_dict() for m in measurements],
                }
            )
            if len(failed) > analysis.failure_limit:
                reasons = "; ".join(f"{r.metric}: {r.reason}" for r in failed[-1].failures())
                summary = (
                    f"analysis {analysis.name!r} failed at step {k + 1}: {len(failed)} of "
                    f"{len(measurements)} measurements failed (limit "
                    f"{analysis.failure_limit}); last: {reasons}"
                )
                await self._rollback(active, k, summary, detail)
                return
            record = self._record(active, MigrationEvent.VERDICT, step=k, ok=True, detail=detail)
        elif gate.approval:
            self.live = {"phase": "approval", "step": k + 1}
            await anyio.sleep_forever()
            return  # pragma: no cover - a promote changes the state and cancels the pass
        else:
            record = self._record(active, MigrationEvent.VERDICT, step=k, detail="no gate")
        await self._propose(FlagChange(migration=record))

    async def _rollback(
        self, active: ActiveMigration, step: int, summary: str, detail: str
    ) -> None:
        log.warning(
            "node %d: rolling back migration %s: %s", self.ctx.node_id, active.migration, summary
        )
        text = json.dumps({"reason": summary, "verdict": json.loads(detail)})
        if len(text) > 4000:
            text = json.dumps({"reason": summary[:3000]})
        record = self._record(active, MigrationEvent.ROLLBACK, step=step, ok=False, detail=text)
        await self._propose(FlagChange(migration=record))

    async def _propose(self, change: FlagChange) -> None:
        assert change.migration is not None
        index = await self.ctx.propose_flags(change)
        log.info(
            "node %d: migration %s %s committed at index %d",
            self.ctx.node_id,
            change.migration.migration,
            change.migration.event,
            index,
        )

    # -- analysis ------------------------------------------------------------------------------

    def _analysed(self, plan: Plan) -> set[str]:
        return {c.metric for a in plan.analyses.values() for c in a.checks}

    async def _analyse(
        self,
        analysis: Analysis,
        active: ActiveMigration,
        voters: list[int],
        migrated: frozenset[int],
    ) -> list[Measurement]:
        old = [n for n in voters if n not in migrated]
        baseline = self._baseline(active)
        measurements: list[Measurement] = []
        for n in range(analysis.measurements):
            self.live = {
                "phase": "analysis",
                "step": active.current_step + 1,
                "analysis": analysis.name,
                "measurement": n + 1,
                "of": analysis.measurements,
                "failure_limit": analysis.failure_limit,
                "migrated": sorted(migrated),
                "old": old,
                "measurements": [m.to_dict() for m in measurements],
            }
            values = await self._window(voters, analysis.interval)
            measurement = measure(
                analysis,
                values,
                migrated=migrated,
                old=old,
                baseline=baseline,
                silent=[v for v in voters if v not in values],
            )
            measurements.append(measurement)
            if sum(not m.ok for m in measurements) > analysis.failure_limit:
                break
        return measurements

    def _baseline(self, active: ActiveMigration) -> dict[str, float | None] | None:
        for _index, record in self.ctx.cluster_flags.migrations.records():
            if (
                record.migration == active.migration
                and record.event == MigrationEvent.STEP
                and record.step == 0
            ):
                try:
                    baseline = json.loads(record.detail).get("baseline")
                except (ValueError, AttributeError):
                    return None
                if not isinstance(baseline, dict):
                    return None
                return {k: v for k, v in baseline.items() if isinstance(v, int | float)}
        return None

    async def _window(
        self, voters: list[int], interval: float
    ) -> dict[int, dict[str, float | None]]:
        """Every voter's metrics over one window of ``interval`` seconds (a node that does
        not answer has no values)."""
        names = list(self.metrics)
        async with KVClient(
            self.ctx.members, timeout=max(1.0, interval), credentials=self.ctx.credentials
        ) as client:
            before = await self._pages(client, voters)
            await anyio.sleep(interval)
            after = await self._pages(client, voters)
        return {
            n: node_values(self.metrics, names, before[n], after[n])
            for n in voters
            if n in before and n in after
        }

    async def _pages(self, client: KVClient, voters: list[int]) -> dict[int, dict[str, Any]]:
        pages: dict[int, dict[str, Any]] = {}

        async def one(node: int) -> None:
            try:
                if node == self.ctx.node_id:
                    pages[node] = await self.ctx.status()
                else:
                    pages[node] = await client.status(node)
            except RaftError as exc:
                log.info("node %d: no status from node %d: %s", self.ctx.node_id, node, exc)

        async with anyio.create_task_group() as tg:
            for node in voters:
                tg.start_soon(one, node)
        return pages

    # -- the final settings file ---------------------------------------------------------------

    async def _write_final_settings(self) -> None:
        """On every node: once the last migration completed with ``write_settings``, the
        file holds its target flags (idempotent: written again only if it changed)."""
        outcomes = self.ctx.cluster_flags.migrations.outcomes()
        if not outcomes or outcomes[-1].outcome != MigrationEvent.COMPLETE:
            return
        last = outcomes[-1]
        try:
            detail = json.loads(last.detail)
        except ValueError:
            return
        path_text = detail.get("write_settings") if isinstance(detail, dict) else None
        if not path_text or self._settings_written == last.migration:
            return
        path = Path(str(path_text).replace("{node}", str(self.ctx.node_id)))
        flags = {str(k): bool(v) for k, v in dict(detail.get("target", {})).items()}
        text = (
            f"# Written by raftmw migration {last.migration!r} (log index {last.log_index}):\n"
            "# the new mode as settings, so it no longer depends on cluster flag entries.\n"
            + tomli_w.dumps({"flags": flags})
        )
        try:
            await anyio.to_thread.run_sync(_write_file, path, text)
        except OSError as exc:
            log.error("node %d: cannot write %s: %s", self.ctx.node_id, path, exc)
        self._settings_written = last.migration

    # -- admin requests ------------------------------------------------------------------------

    async def handle(self, action: str, payload: bytes) -> dict[str, Any]:
        if action not in _ACTIONS:
            raise ServiceError(
                f"migrate action {action!r} is unknown; expected one of {', '.join(_ACTIONS)}"
            )
        try:
            args = json.loads(payload or b"{}")
        except (ValueError, RecursionError):
            raise ServiceError(f"migrate {action}: the request is not JSON") from None
        if not isinstance(args, dict):
            raise ServiceError(f"migrate {action}: the request is not a JSON object")
        journal = self.ctx.cluster_flags.migrations
        if action == "check":
            plan = self._parse(args)
            return {"plan": plan.describe(), "id": plan.id}
        if action == "history":
            return self._history()
        self.ctx.require_leader()
        if action == "status":
            return self._status_page()
        reason = str(args.get("reason", ""))[:500]
        if action == "start":
            plan = self._parse(args)
            members = set(self.ctx.members)
            for n, step in enumerate(plan.steps):
                unknown = sorted(set(step.cohort.nodes) - members)
                if unknown:
                    raise ServiceError(
                        f"steps[{n}].cohort.nodes: {unknown} are not members; expected node "
                        f"ids among {sorted(members)}"
                    )
            record = MigrationRecord(
                migration=plan.id,
                event=MigrationEvent.START.value,
                steps=len(plan.steps),
                targets=sorted(plan.target),
                plan=plan.text,
                at=self.clock(),
                by="operator",
                detail=reason,
            )
            index = await self.ctx.propose_flags(FlagChange(migration=record))
            return {"migration": plan.id, "log_index": index, "plan": plan.describe()}
        active = journal.active
        if active is None:
            raise ServiceError(f"migrate {action}: no migration is running")
        event = {
            "pause": MigrationEvent.PAUSE,
            "resume": MigrationEvent.RESUME,
            "promote": MigrationEvent.PROMOTE,
            "abort": MigrationEvent.ROLLBACK,
        }[action]
        detail = reason
        if action == "abort":
            detail = json.dumps(
                {"reason": f"aborted by the operator: {reason or 'no reason given'}"}
            )
        record = MigrationRecord(
            migration=active.migration,
            event=event.value,
            step=active.current_step,
            ok=action != "abort",
            at=self.clock(),
            by="operator",
            detail=detail,
        )
        index = await self.ctx.propose_flags(FlagChange(migration=record))
        return {"migration": active.migration, "log_index": index, "event": event.value}

    def _parse(self, args: Mapping[str, Any]) -> Plan:
        text = args.get("plan")
        if not isinstance(text, str):
            raise ServiceError("migrate: the request carries no plan text")
        try:
            return parse_plan(text, flags=self.ctx.registry.names(), metrics=self.metrics)
        except PlanError as error:
            raise ServiceError(f"the plan is not valid: {error}") from None

    def _history(self) -> dict[str, Any]:
        journal = self.ctx.cluster_flags.migrations
        return {
            "records": [
                {"log_index": index, **msgspec.to_builtins(record)}
                for index, record in journal.records()
            ],
            "outcomes": [msgspec.to_builtins(o) for o in journal.outcomes()],
        }

    def _status_page(self) -> dict[str, Any]:
        active = self.ctx.cluster_flags.migrations.active
        outcomes = self.ctx.cluster_flags.migrations.outcomes()
        page: dict[str, Any] = {
            "leader": self.ctx.node_id,
            "now": self.clock(),
            "last_outcome": msgspec.to_builtins(outcomes[-1]) if outcomes else None,
            "active": None,
        }
        if active is not None:
            plan = self._plan(active)
            voters = sorted(self.ctx.members)
            page["active"] = {
                "id": active.migration,
                "steps": plan.describe()[1:],
                "step": active.current_step + 1,
                "of": active.start.steps,
                "gate_passed": active.gate_passed,
                "paused": active.paused,
                "target": dict(plan.target),
                "migrated": sorted(
                    migrated_nodes(self.ctx.cluster_flags.values(), plan.target, voters)
                ),
                "members": voters,
                "live": self.live,
            }
        return page

    def status(self) -> dict[str, Any]:
        return {"leader": self.ctx.is_leader(), **self.live}


def _write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
