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
linearized and on the resulting state, not on the order that got there. Each visited pair
``(set of linearized operations as an int bitmask, state)`` is recorded; reaching a recorded
pair again cannot succeed where the first visit failed, so that branch is pruned. This is
what makes thousands of operations per key tractable for the usual histories, where only a
few clients are concurrent at any time.

Operations whose outcome is unknown
-----------------------------------
``ret=None`` means the client never learned the outcome (it timed out, or crashed): the
operation may have taken effect at any instant after its call, or never. Such an operation
gets a call event and no return event, so it stays available to the search until the end and
the search may succeed without ever linearizing it. Its ``result`` is ignored. A ``get`` with
an unknown outcome cannot change the state or constrain anything, so it is dropped.

Many unknown-outcome writes on one key widen every step of the search (each stays a
candidate to the end); ``max_steps`` bounds the work, and a search that runs out of budget
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
    for ``key`` ran out of its step budget and no other key failed). Treat ``None`` as not a
    failure, but report it. ``explanation`` is meant for a human: for a failure it names the
    key, the furthest the search got, and lists that key's operations.
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


def _apply(op: Operation, state: str | None) -> tuple[object, str | None]:
    """Run ``op`` on one key's ``state``: return (the spec's result, the new state)."""
    kind = op.kind
    if kind == "get":
        return state, state
    if kind == "put":
        return None, op.value
    if kind == "delete":
        return None, None
    if kind == "append":
        # Operation validation guarantees append carries a value.
        new = (state or "") + (op.value or "")
        return new, new
    if state == op.expected:
        return True, op.value
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


def _search_key(listed: Sequence[Operation], max_steps: int) -> _KeySearch:
    """Wing & Gong / Lowe search over one key's operations, sorted by call time."""
    # Reads with an unknown outcome neither change the state nor constrain it.
    positions = [i for i, op in enumerate(listed) if not (op.kind == "get" and op.ret is None)]
    ops = [listed[i] for i in positions]
    unknown = [op.ret is None for op in ops]
    blind = [op.kind in ("put", "delete") for op in ops]
    # twin_before[i]: the previous unknown-outcome operation with the same effect, or -1.
    twin_before = [-1] * len(ops)
    last_with_effect: dict[tuple[str, str | None, str | None], int] = {}
    for index, op in enumerate(ops):
        if unknown[index]:
            effect = (op.kind, op.value, op.expected)
            twin_before[index] = last_with_effect.get(effect, -1)
            last_with_effect[effect] = index

    # Events sorted by (time, phase, op): phase 0 = return, 1 = call, so that at equal times
    # returns come first and intervals that only touch are not concurrent (module docstring).
    order: list[tuple[int, int, int]] = []
    for index, op in enumerate(ops):
        order.append((op.call, 1, index))
        if op.ret is not None:
            order.append((op.ret, 0, index))
    order.sort()

    count = len(order)
    head = count  # sentinel node before the first event
    event_op = [index for _, _, index in order]
    event_is_call = [phase == 1 for _, phase, _ in order]
    return_event = [-1] * len(ops)
    for event, (_, phase, index) in enumerate(order):
        if phase == 0:
            return_event[index] = event
    nxt = [*range(1, count), -1, 0 if count else -1]
    prv = [head, *range(count - 1), -1]

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

    returns_left = len(ops) - sum(unknown)
    state: str | None = None
    known = 0  # bit i set: ops[i], whose outcome is known, is linearized
    consumed = 0  # bit i set: ops[i], whose outcome is unknown, is linearized
    # (known, state) -> the consumed sets seen with it, none a superset of another.
    seen: dict[tuple[int, str | None], list[int]] = {}
    stack: list[tuple[int, str | None]] = []  # (call event lifted, state before it)
    deepest = _KeySearch(ok=False)
    deepest_depth = -1
    steps = 0
    entry = nxt[head]
    while returns_left:
        steps += 1
        if steps > max_steps:
            return _KeySearch(ok=None)
        index = event_op[entry]
        if event_is_call[entry]:
            op = ops[index]
            result, new_state = _apply(op, state)
            if unknown[index]:
                twin = twin_before[index]
                legal = new_state != state and (twin == -1 or (consumed >> twin) & 1 == 1)
            else:
                legal = result == op.result
            if legal and blind[index] and stack and unknown[event_op[stack[-1][0]]]:
                legal = False
            if legal:
                bit = 1 << index
                if unknown[index]:
                    new_known, new_consumed = known, consumed | bit
                else:
                    new_known, new_consumed = known | bit, consumed
                legal = _remember(seen, (new_known, new_state), new_consumed)
            if legal:
                stack.append((entry, state))
                known, consumed, state = new_known, new_consumed, new_state
                unlink(entry)
                if return_event[index] != -1:
                    # Unlink the return second so that relinking in reverse order works.
                    unlink(return_event[index])
                    returns_left -= 1
                entry = nxt[head]
            else:
                entry = nxt[entry]
            continue

        # A return whose operation is not linearized yet: dead end, backtrack. The deepest
        # dead end is kept to explain a failure.
        if len(stack) > deepest_depth:
            deepest_depth = len(stack)
            deepest = _KeySearch(
                ok=False,
                deepest_order=tuple(positions[event_op[call]] for call, _ in stack),
                deepest_state=state,
                stuck_at=positions[index],
            )
        if not stack:
            return deepest
        entry, state = stack.pop()
        index = event_op[entry]
        if unknown[index]:
            consumed ^= 1 << index
        else:
            known ^= 1 << index
        if return_event[index] != -1:
            relink(return_event[index])
            returns_left += 1
        relink(entry)
        entry = nxt[entry]
    return _KeySearch(ok=True)


def _remember(
    seen: dict[tuple[int, str | None], list[int]],
    known_and_state: tuple[int, str | None],
    consumed: int,
) -> bool:
    """Record a configuration; False if a seen one dominates it (the search can skip it).

    A seen configuration with the same linearized known-outcome operations and the same
    state, whose consumed unknown-outcome operations are a subset of ``consumed``, had every
    option this one has; it was (or is being) explored. Configurations this one dominates are
    dropped from the record, so each list stays an antichain.
    """
    others = seen.get(known_and_state)
    if others is None:
        seen[known_and_state] = [consumed]
        return True
    if any(other & ~consumed == 0 for other in others):
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
