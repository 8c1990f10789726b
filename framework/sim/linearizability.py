"""Linearizability checking for key-value histories.

Theory of operation
===================

A *history* is what clients saw: for each request, when it was invoked (``call``), when its
response arrived (``ret``) and what the response said (``result``). Times are logical: any
integers that respect real-time order will do (simulator ticks, a monotonic clock).

What linearizable means here
----------------------------
A history is linearizable when every operation can be given a single instant, its
*linearization point*, inside its ``[call, ret]`` interval, such that executing the
operations one at a time in the order of their points against the sequential specification
below reproduces every observed result. Equivalently: there is a total order of the
operations that (1) extends real-time order (if ``a`` returned before ``b`` was called, ``a``
comes first) and (2) is a legal sequential execution.

The sequential specification, per key, with state ``str | None`` (``None`` = absent):

* ``get`` returns the state;
* ``put`` sets the state to ``value`` and returns ``None``;
* ``delete`` sets the state to ``None`` and returns ``None``;
* ``append`` sets the state to ``(state or "") + value`` and returns the new state;
* ``cas`` sets the state to ``value`` and returns ``True`` if the state equals ``expected``
  (``expected=None`` means "the key is absent"); otherwise it returns ``False``.

Keys are checked one at a time
------------------------------
Linearizability is *local* (Herlihy & Wing 1990, Theorem 1; "P-compositionality" in Horn &
Kroening 2015): a history is linearizable iff its sub-history for each object is. Every
operation touches exactly one key, so the history is partitioned by key and each key is
searched alone. This turns one search exponential in the whole history into many small ones,
and it lets a failure name the key at fault.

The search (Wing & Gong 1993, with Lowe's memoization, 2017; as in Porcupine and Knossos)
--------------------------------------------------------------------------------------------
The calls and returns of one key are put in a doubly-linked list sorted by time. The search
walks the list from its head:

* At a *call* event it tries to linearize that operation now: apply it to the current state;
  if the spec's result matches the observed one, the operation is *lifted* (its call and
  return are unlinked from the list), pushed on a stack with the state before it, and the
  walk restarts at the head with the new state.
* At a *return* event the walk has passed every operation that could still come first: the
  operation returning here must already have been linearized, and it was not (it would have
  been lifted). This is a dead end, so the search *backtracks*: pop the last operation,
  restore its state, relink it, and try the next call after it.
* The history is linearizable when no return events are left; it is not when a dead end is
  reached with an empty stack.

Unlinking keeps each removed node's own links, so relinking in reverse order restores the
list exactly (Knuth's dancing links); the search is a loop with an explicit stack, so long
histories cannot hit Python's recursion limit.

Memoization (Lowe): the future of the search depends only on *which* operations are
linearized and on the resulting state, not on the order that got there. Each visited
configuration is recorded; reaching a recorded one again cannot succeed where the first visit
failed, so that branch is pruned. The set of linearized operations is an int bitmask. This is
what makes thousands of operations per key tractable for the usual histories, where only a
few clients are concurrent at any time.

Operations whose outcome is unknown
-----------------------------------
``ret=None`` means the client never learned the outcome (it timed out, or crashed): the
operation may have taken effect at any instant after its call, or never. Such an operation
has a call and no return: its call goes in a second list, walked after the known-outcome
calls and up to the same first return, so it stays available to the search until the end,
and the search may succeed without ever linearizing it. Its ``result`` is ignored. A
``get`` with an unknown outcome cannot change the state or constrain anything, so it is
dropped.

Because such an operation stays a candidate from its call to the end, a naive search tries
it at every dead end in every combination. These keep that in check:

* Order: known-outcome calls are tried first, unknown-outcome ones only after them, as most
  timed-out requests are never needed to explain what clients saw.
* Short chains first: the search runs in passes that allow at most 1, 2, 3, ...
  unknown-outcome steps in a row (depth first, a single pass would try long chains of them
  before short ones). A linearization found by any pass is one; a failure is final only
  from a pass whose limit refused no step, as that pass was the unlimited search.
* Dominance: a configuration is (linearized known-outcome operations, state, consumed
  unknown-outcome operations). One whose consumed set is a superset of a recorded
  configuration's, with the same other parts, has fewer options and is pruned.
* Pruning rules, each of which skips only steps that some other linearization of the same
  operations makes unnecessary (so a linearization survives whenever one exists):

  1. *No-op*: an unknown-outcome step that leaves the state unchanged is skipped; leaving
     the operation out gives the same future with one more option.
  2. *Twins*: unknown-outcome operations with the same effect (kind, value, expected) are
     interchangeable once called, so they are taken in call order.
  3. *Overwritten*: right after an unknown-outcome step, a ``put`` or ``delete`` (whose
     result never depends on the state) is skipped: it would hide that step, and leaving
     the step out is as good.
  4. *Deferred*: right after an unknown-outcome step ``u`` taken in state ``s``, a
     known-outcome operation ``o`` that commutes with ``u`` in ``s`` (same result, same
     final state in either order) is skipped; the order ``o, u`` reaches the same place.
     Unknown-outcome steps thus sit just before an operation that observes them.

  Rules 3 and 4 depend on the step just taken, so its *restriction* (the unknown-outcome
  step's effect and the state before it, or nothing after a known-outcome step) is part of
  the configuration. A recorded configuration dominates another only if its restriction is
  the same or nothing, so that it was free to explore every move the other could make.

Even so, many unknown-outcome writes of a few distinct values on one key can make the search
exponential, above all when a failure must be proved (every alternative is tried).
``max_steps`` bounds the work per key, all passes together; a search that runs out of budget
reports "unknown" (``ok=None``) rather than a verdict.

Ties
----
When one operation's ``ret`` equals another's ``call``, the return is taken to happen first:
intervals that only touch are *not* concurrent, so the first operation must be linearized
before the second. For the same reason an operation's own interval must not be empty:
``ret`` must be greater than ``call`` (two empty intervals at one instant would each have to
precede the other).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_MAX_STEPS", "KINDS", "CheckResult", "Operation", "check_history"]

KINDS: Final = frozenset({"get", "put", "delete", "append", "cas"})
"""The operation kinds of the sequential key-value specification."""

DEFAULT_MAX_STEPS: Final = 2_000_000
"""Search steps allowed per key before :func:`check_history` gives up with ``ok=None``."""

# Kinds whose ``value`` is the string written; a missing value is a caller's mistake.
_WRITES_VALUE: Final = frozenset({"put", "append"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """One client request on one key and, if the client learned it, its response.

    ``value`` is the string written by ``put`` and ``append`` and the new value of ``cas``
    (``None`` there makes the key absent). ``expected`` is the value ``cas`` compares with
    (``None`` = "key absent"). ``ret=None`` means the outcome is unknown: the operation may
    have taken effect at any time after ``call``, or never, and ``result`` is ignored.
    Otherwise ``result`` is what the response said: ``get`` -> ``str | None``, ``put`` and
    ``delete`` -> ``None``, ``append`` -> the new value (``str``), ``cas`` -> ``bool``.
    """

    client_id: int
    kind: str
    key: str
    value: str | None = None
    expected: str | None = None
    call: int
    ret: int | None
    result: object = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"operation kind {self.kind!r} (client {self.client_id}, key {self.key!r}) "
                f"is not one of {', '.join(sorted(KINDS))}"
            )
        if self.ret is not None and self.ret <= self.call:
            raise ValueError(
                f"{self.kind} on key {self.key!r} by client {self.client_id} returns at "
                f"{self.ret} but was called at {self.call}: ret must be greater than call"
            )
        if self.kind in _WRITES_VALUE and self.value is None:
            raise ValueError(
                f"{self.kind} on key {self.key!r} by client {self.client_id} needs a string "
                "value, got None"
            )
        if self.kind in ("get", "delete") and self.value is not None:
            raise ValueError(
                f"{self.kind} on key {self.key!r} by client {self.client_id} takes no value, "
                f"got {self.value!r}"
            )
        if self.kind != "cas" and self.expected is not None:
            raise ValueError(
                f"{self.kind} on key {self.key!r} by client {self.client_id} takes no "
                f"expected value (only cas does), got {self.expected!r}"
            )
        if self.ret is not None and not _result_fits(self.kind, self.result):
            raise ValueError(
                f"{self.kind} on key {self.key!r} by client {self.client_id} has result "
                f"{self.result!r}; expected {_RESULT_TYPES[self.kind]}"
            )


_RESULT_TYPES: Final = {
    "get": "str or None",
    "put": "None",
    "delete": "None",
    "append": "the new value, a str",
    "cas": "a bool",
}


def _result_fits(kind: str, result: object) -> bool:
    if kind == "get":
        return result is None or isinstance(result, str)
    if kind in ("put", "delete"):
        return result is None
    if kind == "append":
        return isinstance(result, str)
    return isinstance(result, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """The verdict on a history.

    ``ok`` is ``True`` (linearizable), ``False`` (not linearizable: ``key`` is the first key,
    in order of first appearance, whose sub-history is not) or ``None`` (unknown: the search
    for ``key`` ran out of its step budget and no other key failed). ``None`` is no pass:
    the simulator fails a run it cannot judge. ``explanation`` is meant for a human: for a
    failure it names the key, the furthest the search got, and lists that key's operations.
    """

    ok: bool | None
    key: str | None
    explanation: str


def check_history(ops: Iterable[Operation], *, max_steps: int = DEFAULT_MAX_STEPS) -> CheckResult:
    """Decide whether ``ops`` is linearizable against the sequential key-value spec.

    Each key is searched separately with at most ``max_steps`` steps; the first key found
    not linearizable ends the check. See the module docstring for the rules.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    by_key: dict[str, list[Operation]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)

    gave_up: list[tuple[str, int]] = []
    for key, key_ops in by_key.items():
        listed = sorted(key_ops, key=lambda op: (op.call, op.client_id))
        search = _search_key(listed, max_steps)
        if search.ok is False:
            return CheckResult(ok=False, key=key, explanation=_explain_failure(key, listed, search))
        if search.ok is None:
            gave_up.append((key, len(listed)))
    if gave_up:
        unknown = ", ".join(f"{key!r} ({count} operations)" for key, count in gave_up)
        return CheckResult(
            ok=None,
            key=gave_up[0][0],
            explanation=(
                f"unknown: the search gave up after {max_steps} steps on key(s) {unknown}; "
                "no key was found to be non-linearizable"
            ),
        )
    total = sum(len(key_ops) for key_ops in by_key.values())
    return CheckResult(
        ok=True,
        key=None,
        explanation=f"linearizable: {total} operations on {len(by_key)} keys",
    )


# --------------------------------------------------------------------------------------------
# The sequential specification
# --------------------------------------------------------------------------------------------


def _apply(
    kind: str, value: str | None, expected: str | None, state: str | None
) -> tuple[object, str | None]:
    """Run one operation on a key whose value is ``state``: (the spec's result, new state)."""
    if kind == "get":
        return state, state
    if kind == "put":
        return None, value
    if kind == "delete":
        return None, None
    if kind == "append":
        # Operation validation guarantees that an append carries a value.
        new = (state or "") + (value or "")
        return new, new
    if state == expected:
        return True, value
    return False, state


# --------------------------------------------------------------------------------------------
# The per-key search
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _KeySearch:
    """Outcome of one key's search; the ``deepest_*`` fields describe a failure."""

    ok: bool | None
    deepest_order: tuple[int, ...] = ()  # positions in the listed sub-history
    deepest_state: str | None = None
    stuck_at: int = -1  # the listed operation whose return the deepest attempt could not pass


# What an unknown-outcome step just taken forbids next (pruning rules 3 and 4): its kind,
# value and expected value, and the state before it. None after a known-outcome step.
_Restriction = tuple[str, str | None, str | None, str | None] | None


def _search_key(listed: Sequence[Operation], max_steps: int) -> _KeySearch:
    """Search one key's operations (sorted by call time) in passes of growing chain limit."""
    searcher = _KeySearcher(listed)
    steps_left = max_steps
    chain_limit = 1
    while True:
        outcome, steps, limited = searcher.run(chain_limit, steps_left)
        steps_left -= steps
        if outcome.ok is not False or not limited:
            return outcome
        chain_limit += 1


class _KeySearcher:
    """The Wing & Gong / Lowe search over one key's operations, sorted by call time."""

    def __init__(self, listed: Sequence[Operation]) -> None:
        # Reads with an unknown outcome neither change the state nor constrain it.
        self.positions = [
            i for i, op in enumerate(listed) if not (op.kind == "get" and op.ret is None)
        ]
        self.ops = ops = [listed[i] for i in self.positions]
        self.unknown = unknown = [op.ret is None for op in ops]
        self.blind = [op.kind in ("put", "delete") for op in ops]
        # twin_before[i]: the previous unknown-outcome operation with the same effect, or -1.
        self.twin_before = [-1] * len(ops)
        last_with_effect: dict[tuple[str, str | None, str | None], int] = {}
        for index, op in enumerate(ops):
            if unknown[index]:
                effect = (op.kind, op.value, op.expected)
                self.twin_before[index] = last_with_effect.get(effect, -1)
                last_with_effect[effect] = index

        # Two linked lists. The known list holds the calls and returns of operations whose
        # outcome is known, sorted by (time, phase): phase 0 = return, 1 = call, so that at
        # equal times returns come first and intervals that only touch are not concurrent.
        # The unknown list holds the calls of the others, sorted by time; they have no return.
        known_events = sorted(
            [(op.call, 1, i) for i, op in enumerate(ops) if not unknown[i]]
            + [(op.ret, 0, i) for i, op in enumerate(ops) if op.ret is not None]
        )
        unknown_calls = sorted((op.call, 1, i) for i, op in enumerate(ops) if unknown[i])
        nodes = known_events + unknown_calls
        self.returns = len(known_events) // 2
        self.node_time = [time for time, _, _ in nodes]
        self.node_op = [index for _, _, index in nodes]
        self.node_is_return = [phase == 0 for _, phase, _ in nodes]
        self.return_node = [-1] * len(ops)
        for node, (_, phase, index) in enumerate(nodes):
            if phase == 0:
                self.return_node[index] = node
        self.head_known, self.head_unknown = len(nodes), len(nodes) + 1  # sentinels
        self.nxt = [-1] * (len(nodes) + 2)
        self.prv = [-1] * (len(nodes) + 2)
        for head, chain in (
            (self.head_known, range(len(known_events))),
            (self.head_unknown, range(len(known_events), len(nodes))),
        ):
            before = head
            for node in chain:
                self.nxt[before], self.prv[node] = node, before
                before = node

    def run(self, chain_limit: int, max_steps: int) -> tuple[_KeySearch, int, bool]:
        """One pass allowing at most ``chain_limit`` unknown-outcome steps in a row.

        Returns the outcome, the steps taken and whether the limit refused a step. A failure
        is final only if it did not: then the pass was the unlimited search. The lists are
        left as they were found, unless the pass succeeded or ran out of steps.
        """
        positions, ops, unknown, blind = self.positions, self.ops, self.unknown, self.blind
        twin_before, node_time, node_op = self.twin_before, self.node_time, self.node_op
        node_is_return, return_node = self.node_is_return, self.return_node
        head_known, head_unknown, nxt, prv = self.head_known, self.head_unknown, self.nxt, self.prv

        def unlink(node: int) -> None:
            after = nxt[node]
            before = prv[node]
            nxt[before] = after
            if after != -1:
                prv[after] = before

        def relink(node: int) -> None:
            after = nxt[node]
            nxt[prv[node]] = node
            if after != -1:
                prv[after] = node

        # The configuration: known, consumed, state and restriction.
        known = 0  # bit i set: ops[i], whose outcome is known, is linearized
        consumed = 0  # bit i set: ops[i], whose outcome is unknown, is linearized
        state: str | None = None
        restriction: _Restriction = None
        chain = 0  # unknown-outcome steps in a row at the top of the stack
        limited = False
        memo = _Memo()
        # (node lifted, state, restriction and chain before it, frontier then)
        stack: list[tuple[int, str | None, _Restriction, int, int]] = []
        returns_left = self.returns
        frontier = -1  # the first return left in the known list, once the walk reached it
        deepest = _KeySearch(ok=False)
        deepest_depth = -1
        steps = 0
        entry = nxt[head_known]
        while returns_left:
            steps += 1
            if steps > max_steps:
                return _KeySearch(ok=None), steps, limited

            if entry == -1 or (unknown[node_op[entry]] and node_time[entry] >= node_time[frontier]):
                # No call left that may come before the frontier's return: dead end,
                # backtrack. The deepest dead end is kept to explain a failure.
                if len(stack) > deepest_depth:
                    deepest_depth = len(stack)
                    deepest = _KeySearch(
                        ok=False,
                        deepest_order=tuple(positions[node_op[node]] for node, *_ in stack),
                        deepest_state=state,
                        stuck_at=positions[node_op[frontier]],
                    )
                if not stack:
                    return deepest, steps, limited
                entry, state, restriction, chain, frontier = stack.pop()
                index = node_op[entry]
                if unknown[index]:
                    consumed ^= 1 << index
                else:
                    known ^= 1 << index
                    relink(return_node[index])
                    returns_left += 1
                relink(entry)
                entry = nxt[entry]
                continue

            if node_is_return[entry]:
                # Every known-outcome call that may come first has been tried. Unknown-outcome
                # calls go last: most are never needed, so valid histories finish sooner.
                frontier = entry
                entry = nxt[head_unknown]
                continue

            index = node_op[entry]
            op = ops[index]
            result, new_state = _apply(op.kind, op.value, op.expected, state)
            new_restriction: _Restriction = None
            if unknown[index]:
                # Rule 1 (no-op) and rule 2 (twins in call order).
                twin = twin_before[index]
                legal = new_state != state and (twin == -1 or (consumed >> twin) & 1 == 1)
                new_restriction = (op.kind, op.value, op.expected, state)
                if legal and chain == chain_limit:
                    legal = False
                    limited = True
            else:
                legal = result == op.result
            if legal and restriction is not None:
                if blind[index]:
                    legal = False  # rule 3: this write would hide the step just taken
                elif not unknown[index]:
                    legal = not _commutes(restriction, op, new_state)  # rule 4
            if legal:
                bit = 1 << index
                if unknown[index]:
                    new_known, new_consumed = known, consumed | bit
                else:
                    new_known, new_consumed = known | bit, consumed
                legal = memo.record(new_known, new_state, new_restriction, new_consumed)
            if not legal:
                entry = nxt[entry]
                continue
            stack.append((entry, state, restriction, chain, frontier))
            known, consumed, state, restriction = (
                new_known,
                new_consumed,
                new_state,
                new_restriction,
            )
            chain = chain + 1 if unknown[index] else 0
            unlink(entry)
            if not unknown[index]:
                # Unlink the return after the call, so that relinking in reverse order works.
                unlink(return_node[index])
                returns_left -= 1
            entry = nxt[head_known]
        return _KeySearch(ok=True), steps, limited


def _commutes(
    restriction: tuple[str, str | None, str | None, str | None],
    op: Operation,
    state_after_both: str | None,
) -> bool:
    """Whether ``op``, legal right after the unknown-outcome step in ``restriction`` and then
    leaving ``state_after_both``, gives the same result and state when taken right before it.
    """
    kind, value, expected, state_before = restriction
    result, state_between = _apply(op.kind, op.value, op.expected, state_before)
    return (
        result == op.result and _apply(kind, value, expected, state_between)[1] == state_after_both
    )


class _Memo:
    """The configurations seen, with dominance.

    A configuration is skipped when a recorded one has the same linearized known-outcome
    operations and state, a subset of its consumed unknown-outcome operations, and the same
    restriction or none: that one had every option this one has, and was (or is being)
    explored. Configurations a new one dominates are dropped, so each list is an antichain.
    """

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[tuple[int, str | None, _Restriction], list[int]] = {}

    def record(
        self, known: int, state: str | None, restriction: _Restriction, consumed: int
    ) -> bool:
        """Record the configuration; False if a recorded one dominates it."""
        unrestricted = self._seen.get((known, state, None), ())
        if any(other & ~consumed == 0 for other in unrestricted):
            return False
        others = self._seen.setdefault((known, state, restriction), [])
        if restriction is not None and any(other & ~consumed == 0 for other in others):
            return False
        others[:] = [other for other in others if consumed & ~other != 0]
        others.append(consumed)
        return True


# --------------------------------------------------------------------------------------------
# Explanations
# --------------------------------------------------------------------------------------------


def _describe(op: Operation) -> str:
    """``op`` as a call with its outcome, e.g. ``cas('k', expected=None, new='a') -> True``."""
    if op.kind in ("get", "delete"):
        text = f"{op.kind}({op.key!r})"
    elif op.kind == "cas":
        text = f"cas({op.key!r}, expected={op.expected!r}, new={op.value!r})"
    else:
        text = f"{op.kind}({op.key!r}, {op.value!r})"
    if op.ret is None:
        if op.kind == "get":
            return f"{text} -> outcome unknown (ignored: a read that changes nothing)"
        return f"{text} -> outcome unknown (may take effect any time after its call, or never)"
    return f"{text} -> {op.result!r}"


def _explain_failure(key: str, listed: Sequence[Operation], search: _KeySearch) -> str:
    lines = [
        f"key {key!r} is not linearizable: {len(listed)} operations, none of their "
        "orders fits both real-time order and the key-value spec."
    ]
    stuck = listed[search.stuck_at]
    prefix = ", ".join(f"#{i}" for i in search.deepest_order) or "nothing"
    lines.append(
        f"The search got furthest by linearizing {prefix} (state then: "
        f"{search.deepest_state!r}) and could then find no way to linearize #{search.stuck_at} "
        f"({_describe(stuck)}) before it returned at {stuck.ret}."
    )
    lines.append("Operations, by call time ([call, ret]; ? = outcome unknown):")
    call_width = max(len(str(op.call)) for op in listed)
    ret_width = max(len(str(op.ret)) if op.ret is not None else 1 for op in listed)
    number_width = len(str(len(listed) - 1))
    for i, op in enumerate(listed):
        ret = "?" if op.ret is None else str(op.ret)
        lines.append(
            f"  #{i:<{number_width}}  [{op.call:>{call_width}}, {ret:>{ret_width}}]  "
            f"client {op.client_id}: {_describe(op)}"
        )
    return "\n".join(lines)
