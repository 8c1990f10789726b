"""Linearizability checker: tables of small histories, then generated valid and broken ones.

Builders take the interval first, ``put(call, ret, key, value)``, so that a table reads as a
timeline. ``ret=None`` is a request whose outcome the client never learned.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from framework.sim import linearizability
from framework.sim.linearizability import CheckResult, Operation, check_history

# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def put(call: int, ret: int | None, key: str, value: str, client: int = 1) -> Operation:
    return Operation(client_id=client, kind="put", key=key, value=value, call=call, ret=ret)


def get(call: int, ret: int | None, key: str, result: str | None, client: int = 1) -> Operation:
    return Operation(client_id=client, kind="get", key=key, call=call, ret=ret, result=result)


def delete(call: int, ret: int | None, key: str, client: int = 1) -> Operation:
    return Operation(client_id=client, kind="delete", key=key, call=call, ret=ret)


def append(
    call: int, ret: int | None, key: str, value: str, result: str | None, client: int = 1
) -> Operation:
    return Operation(
        client_id=client, kind="append", key=key, value=value, call=call, ret=ret, result=result
    )


def cas(
    call: int,
    ret: int | None,
    key: str,
    expected: str | None,
    new: str | None,
    result: bool | None,
    client: int = 1,
) -> Operation:
    return Operation(
        client_id=client,
        kind="cas",
        key=key,
        expected=expected,
        value=new,
        call=call,
        ret=ret,
        result=result,
    )


# --------------------------------------------------------------------------------------------
# Small histories, each tied to the rule it exercises
# --------------------------------------------------------------------------------------------

HISTORIES = [
    # Sequential histories: one order, fixed by real time.
    pytest.param([], True, id="empty history"),
    pytest.param([get(0, 1, "x", None)], True, id="read of a key never written is None"),
    pytest.param([put(0, 1, "x", "a"), get(2, 3, "x", "a")], True, id="sequential read"),
    pytest.param(
        [put(0, 1, "x", "a"), put(2, 3, "x", "b"), get(4, 5, "x", "a")],
        False,
        id="stale read after a completed write",
    ),
    pytest.param(
        [put(0, 1, "x", "a"), delete(2, 3, "x"), get(4, 5, "x", None)],
        True,
        id="delete makes the key absent",
    ),
    pytest.param(
        [put(0, 1, "x", "a"), delete(2, 3, "x"), get(4, 5, "x", "a")],
        False,
        id="read of a deleted value",
    ),
    pytest.param(
        [put(0, 1, "x", "a"), get(2, 3, "x", "zz")], False, id="value never written appears"
    ),
    # Concurrency: an overlapping read may see the old or the new value.
    pytest.param(
        [put(0, 1, "x", "a"), put(2, 6, "x", "b", 2), get(3, 4, "x", "a", 3)],
        True,
        id="read concurrent with a write sees the old value",
    ),
    pytest.param(
        [put(0, 1, "x", "a"), put(2, 6, "x", "b", 2), get(3, 4, "x", "b", 3)],
        True,
        id="read concurrent with a write sees the new value",
    ),
    pytest.param(
        [put(0, 1, "x", "a"), put(2, 6, "x", "b", 2), get(3, 4, "x", "b", 3), get(5, 7, "x", "a")],
        False,
        id="a read after a read that saw the new value cannot see the old one",
    ),
    pytest.param(
        [put(0, 10, "x", "a"), put(1, 11, "x", "b", 2), get(2, 3, "x", "a"), get(4, 5, "x", "b")],
        True,
        id="reads during two concurrent puts see them in one order",
    ),
    pytest.param(
        [
            put(0, 10, "x", "a"),
            put(1, 11, "x", "b", 2),
            get(2, 3, "x", "a", 3),
            get(4, 5, "x", "b", 3),
            get(6, 7, "x", "a", 3),
        ],
        False,
        id="reads during two concurrent puts disagree on their order",
    ),
    pytest.param(
        [
            put(0, 10, "x", "a"),
            put(1, 11, "x", "b", 2),
            get(12, 13, "x", "a", 3),
            get(14, 15, "x", "b", 3),
            get(16, 17, "x", "a", 3),
        ],
        False,
        id="reads after two concurrent puts disagree on which was last",
    ),
    # Ties: intervals that only touch are not concurrent (the return comes first).
    pytest.param(
        [put(0, 5, "x", "a"), get(5, 6, "x", None, 2)],
        False,
        id="a call at the time of a return comes after it",
    ),
    pytest.param(
        [put(0, 5, "x", "a"), get(4, 6, "x", None, 2)],
        True,
        id="overlapping by one tick is concurrent",
    ),
    # append returns the new value; every result must fit one order.
    pytest.param(
        [append(0, 1, "x", "a", "a"), append(2, 3, "x", "b", "ab"), get(4, 5, "x", "ab")],
        True,
        id="sequential appends",
    ),
    pytest.param(
        [append(0, 1, "x", "a", "a"), append(2, 3, "x", "b", "b")],
        False,
        id="append that lost an earlier append",
    ),
    pytest.param(
        [append(0, 5, "x", "a", "ba"), append(1, 6, "x", "b", "b", 2), get(7, 8, "x", "ba")],
        True,
        id="concurrent appends in the other order",
    ),
    pytest.param(
        [append(0, 5, "x", "a", "a"), append(1, 6, "x", "b", "b", 2)],
        False,
        id="concurrent appends both claim to be first",
    ),
    pytest.param(
        [append(0, 5, "x", "a", "ba"), append(1, 6, "x", "b", "b", 2), get(7, 8, "x", "ab")],
        False,
        id="read disagrees with the order the append results show",
    ),
    # cas: compare with the current value (None = absent), swap only on a match.
    pytest.param([cas(0, 1, "x", None, "a", True), get(2, 3, "x", "a")], True, id="cas on absent"),
    pytest.param([cas(0, 1, "x", "z", "a", True)], False, id="cas succeeds on a mismatch"),
    pytest.param([cas(0, 1, "x", None, "a", False)], False, id="cas fails on a match"),
    pytest.param(
        [cas(0, 1, "x", "z", "a", False), get(2, 3, "x", None)],
        True,
        id="failed cas changes nothing",
    ),
    pytest.param(
        [cas(0, 1, "x", "z", "a", False), get(2, 3, "x", "a")],
        False,
        id="failed cas took effect",
    ),
    pytest.param(
        [put(0, 1, "x", "a"), cas(2, 3, "x", "a", None, True), get(4, 5, "x", None)],
        True,
        id="cas to None makes the key absent",
    ),
    pytest.param(
        [cas(0, 5, "x", None, "a", True), cas(1, 6, "x", None, "b", False, 2)],
        True,
        id="concurrent cas on absent: one wins",
    ),
    pytest.param(
        [cas(0, 5, "x", None, "a", True), cas(1, 6, "x", None, "b", True, 2)],
        False,
        id="concurrent cas on absent: both win",
    ),
    # Unknown outcomes: may take effect any time after the call, or never.
    pytest.param(
        [put(0, None, "x", "a"), get(5, 6, "x", "a", 2)],
        True,
        id="timed-out put shows up later",
    ),
    pytest.param(
        [put(0, None, "x", "a"), get(5, 6, "x", None, 2)],
        True,
        id="timed-out put never shows",
    ),
    pytest.param(
        [put(0, None, "x", "a"), get(5, 6, "x", "a", 2), get(7, 8, "x", None, 2)],
        False,
        id="timed-out put shows, then is undone",
    ),
    pytest.param(
        [get(0, 1, "x", "a", 2), put(2, None, "x", "a")],
        False,
        id="timed-out put cannot take effect before its call",
    ),
    pytest.param(
        [put(0, 1, "x", "a"), put(2, None, "x", "b"), put(3, 4, "x", "c"), get(5, 6, "x", "b", 2)],
        True,
        id="timed-out put takes effect after a later put",
    ),
    pytest.param(
        [put(0, None, "x", "b"), get(1, 2, "x", "b", 2), put(3, 4, "x", "c"), get(5, 6, "x", "b")],
        False,
        id="timed-out put takes effect only once",
    ),
    pytest.param(
        [get(0, None, "x", "never-written")], True, id="read with unknown outcome is ignored"
    ),
    pytest.param(
        [append(0, None, "x", "a", None), append(1, 2, "x", "b", "ab", 2)],
        True,
        id="timed-out append shows in a later result",
    ),
    pytest.param(
        [cas(0, None, "x", "z", "a", None), get(1, 2, "x", "a", 2)],
        False,
        id="timed-out cas still obeys its comparison",
    ),
    # Unknown outcomes in a row, and the pruning rules for them (module docstring).
    pytest.param(
        [
            append(0, None, "x", "a", None),
            append(1, None, "x", "b", None, 2),
            get(2, 3, "x", "ba", 3),
        ],
        True,
        id="two timed-out appends take effect in a row",
    ),
    pytest.param(
        [
            append(0, None, "x", "a", None),
            append(1, None, "x", "b", None, 2),
            get(2, 3, "x", "abb", 3),
        ],
        False,
        id="a timed-out append takes effect only once",
    ),
    pytest.param(
        [put(0, None, "x", "a"), put(1, 2, "x", "b", 2), get(3, 4, "x", "a", 3)],
        True,
        id="timed-out put lands after a put that would hide it",
    ),
    pytest.param(
        [put(0, None, "x", "a"), cas(1, 2, "x", "z", "b", False, 2), get(3, 4, "x", "a", 3)],
        True,
        id="timed-out put lands after a failed cas that cannot tell",
    ),
    pytest.param(
        [put(0, None, "x", "a"), cas(1, 2, "x", None, "b", False, 2), get(3, 4, "x", None, 3)],
        False,
        id="a failed cas that needs the timed-out put cannot also have missed it",
    ),
    pytest.param(
        # The search first orders the puts a, b and needs the timed-out put to explain the
        # first read; the order b, a reaches the same state without it, and it is needed later.
        [
            put(0, 5, "x", "a"),
            put(1, 6, "x", "b", 2),
            put(0, None, "x", "a", 3),
            get(7, 8, "x", "a"),
            delete(9, 10, "x"),
            get(11, 12, "x", "a"),
        ],
        True,
        id="memo keeps apart states reached with and without a timed-out put",
    ),
    pytest.param(
        [
            delete(0, None, "x"),
            delete(1, None, "x", 2),
            put(2, 3, "x", "a", 3),
            get(4, 5, "x", None),
            get(6, 7, "x", None, 2),
        ],
        True,
        id="identical timed-out deletes",
    ),
]


@pytest.mark.parametrize(("history", "linearizable"), HISTORIES)
def test_small_histories(history: list[Operation], linearizable: bool) -> None:
    result = check_history(history)
    assert result.ok is linearizable, result.explanation
    if linearizable:
        assert result.key is None
    else:
        assert result.key == "x"


def test_public_api() -> None:
    assert sorted(linearizability.__all__) == [
        "CheckResult",
        "DEFAULT_MAX_STEPS",
        "KINDS",
        "Operation",
        "check_history",
    ]
    assert {"get", "put", "delete", "append", "cas"} == linearizability.KINDS


def test_keys_are_checked_apart_and_the_failing_key_is_named() -> None:
    history = [
        put(0, 1, "x", "a"),
        put(2, 3, "y", "b"),
        get(4, 5, "x", "a"),
        get(6, 7, "y", "stale"),
        get(8, 9, "x", "a"),
    ]
    result = check_history(history)
    assert result.ok is False
    assert result.key == "y"
    assert "'y'" in result.explanation
    assert "'x'" not in result.explanation


def test_keys_do_not_constrain_each_other() -> None:
    # Merged into one register this would be a stale read; per key it is fine.
    history = [put(0, 1, "x", "a"), put(2, 3, "y", "b"), get(4, 5, "x", "a")]
    assert check_history(history).ok is True


def test_the_explanation_lists_the_failing_keys_operations() -> None:
    history = [
        put(0, 1, "cart", "apple"),
        put(2, None, "cart", "pear", 2),
        get(3, 4, "cart", "plum", 3),
    ]
    result = check_history(history)
    assert result.ok is False
    assert "'cart'" in result.explanation
    for line in ("put('cart', 'apple')", "put('cart', 'pear') -> outcome unknown", "-> 'plum'"):
        assert line in result.explanation


def test_running_out_of_budget_is_unknown_not_a_verdict() -> None:
    history = [put(2 * i, 2 * i + 1, "x", str(i)) for i in range(10)]
    assert check_history(history).ok is True
    result = check_history(history, max_steps=3)
    assert result.ok is None
    assert result.key == "x"
    assert "'x'" in result.explanation


def test_a_failure_outranks_a_key_that_ran_out_of_budget() -> None:
    history = [put(2 * i, 2 * i + 1, "x", str(i)) for i in range(10)]
    history.append(get(0, 1, "y", "never-written"))
    result = check_history(history, max_steps=3)
    assert result.ok is False
    assert result.key == "y"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"kind": "incr"}, "'incr'", id="unknown kind"),
        pytest.param({"call": 5, "ret": 5}, "ret must be greater than call", id="empty interval"),
        pytest.param({"call": 5, "ret": 4}, "ret must be greater than call", id="ret before call"),
        pytest.param(
            {"kind": "put", "value": None}, "needs a string value", id="put without value"
        ),
        pytest.param({"kind": "get", "value": "a"}, "takes no value", id="get with a value"),
        pytest.param({"kind": "put", "expected": "a"}, "only cas", id="put with expected"),
        pytest.param({"kind": "cas", "result": "yes"}, "a bool", id="cas result not a bool"),
        pytest.param({"kind": "put", "result": True}, "None", id="put result not None"),
        pytest.param({"kind": "append", "result": None}, "a str", id="append result missing"),
    ],
)
def test_malformed_operations_are_rejected(fields: dict[str, Any], message: str) -> None:
    well_formed_put: dict[str, Any] = {
        "client_id": 1,
        "kind": "put",
        "key": "x",
        "value": "a",
        "call": 0,
        "ret": 1,
    }
    Operation(**well_formed_put)
    with pytest.raises(ValueError, match=message):
        Operation(**(well_formed_put | fields))


# --------------------------------------------------------------------------------------------
# Generated histories: a reference key-value store linearizes every operation at a random
# instant inside its interval, so every generated history is linearizable by construction.
# --------------------------------------------------------------------------------------------

VALUES = "abc"
NEVER_WRITTEN = "#never-written"  # '#' is not in VALUES, so no append can build it


def reference_step(
    kind: str, value: str | None, expected: str | None, old: str | None
) -> tuple[object, str | None]:
    """The key-value spec, written apart from the checker's: (result, new value of the key)."""
    if kind == "get":
        return old, old
    if kind == "put":
        return None, value
    if kind == "delete":
        return None, None
    if kind == "append":
        assert value is not None
        new = (old or "") + value
        return new, new
    if old == expected:
        return True, value
    return False, old


@dataclass
class _Request:
    client: int
    kind: str
    key: str
    value: str | None
    expected: str | None
    call: int
    result: object = None
    done: bool = False  # taken effect on the reference store


def generate_history(
    rng: random.Random,
    *,
    clients: int,
    n_ops: int,
    keys: int,
    sequential: bool = False,
    timeout_chance: float = 0.0,
) -> list[Operation]:
    """A history of ``n_ops`` requests from ``clients`` clients against a reference store.

    Each client has at most one request in flight. A request takes effect on the store at
    one tick strictly inside its interval. With ``timeout_chance`` a client gives up on a
    request (``ret=None``); if it had not taken effect yet it may do so later, or never.
    ``sequential`` runs every request from call to return before the next is called.
    """
    store: dict[str, str] = {}
    key_names = [f"k{i}" for i in range(keys)]
    time = 0
    history: list[Operation] = []
    in_flight: dict[int, _Request] = {}
    orphans: list[_Request] = []  # timed out before taking effect
    started = 0

    def tick() -> int:
        nonlocal time
        time += 1
        return time

    def call(client: int) -> _Request:
        kind = rng.choice(["get", "get", "put", "delete", "append", "cas"])
        key = rng.choice(key_names)
        value = rng.choice(VALUES) if kind in ("put", "append", "cas") else None
        expected = None
        if kind == "cas":
            expected = store.get(key) if rng.random() < 0.5 else rng.choice([None, *VALUES])
        return _Request(client, kind, key, value, expected, call=tick())

    def take_effect(request: _Request) -> None:
        tick()
        request.result, new = reference_step(
            request.kind, request.value, request.expected, store.get(request.key)
        )
        if new is None:
            store.pop(request.key, None)
        else:
            store[request.key] = new
        request.done = True

    def finish(request: _Request, ret: int | None) -> None:
        history.append(
            Operation(
                client_id=request.client,
                kind=request.kind,
                key=request.key,
                value=request.value,
                expected=request.expected,
                call=request.call,
                ret=ret,
                result=request.result if ret is not None else None,
            )
        )

    while started < n_ops or in_flight:
        if sequential:
            request = call(rng.randrange(clients))
            take_effect(request)
            finish(request, tick())
            started += 1
            continue
        choices: list[tuple[str, int]] = [("orphan", i) for i in range(len(orphans))]
        choices += [(("return" if r.done else "effect"), c) for c, r in in_flight.items()]
        if started < n_ops:
            choices += [("call", c) for c in range(clients) if c not in in_flight]
        action, which = rng.choice(choices)
        if action == "call":
            in_flight[which] = call(which)
            started += 1
        elif action == "orphan":
            request = orphans.pop(which)
            if rng.random() < 0.5:
                take_effect(request)
        elif rng.random() < timeout_chance:
            request = in_flight.pop(which)
            finish(request, None)
            if not request.done:
                orphans.append(request)
        elif action == "effect":
            take_effect(in_flight[which])
        else:
            finish(in_flight.pop(which), tick())
    return history


histories = st.builds(
    generate_history,
    st.randoms(use_true_random=False),
    clients=st.integers(1, 4),
    n_ops=st.integers(0, 40),
    keys=st.integers(1, 3),
    sequential=st.booleans(),
    timeout_chance=st.sampled_from([0.0, 0.1, 0.3]),
)


@settings(max_examples=300, deadline=None)
@given(histories)
def test_generated_histories_are_linearizable(history: list[Operation]) -> None:
    result = check_history(history)
    assert result.ok is True, result.explanation


@settings(max_examples=300, deadline=None)
@given(histories, st.data())
def test_a_read_of_a_value_never_written_is_caught(
    history: list[Operation], data: st.DataObject
) -> None:
    reads = [
        i
        for i, op in enumerate(history)
        if op.kind == "get" and op.ret is not None and isinstance(op.result, str)
    ]
    assume(reads)
    victim = data.draw(st.sampled_from(reads))
    history[victim] = replace(history[victim], result=NEVER_WRITTEN)
    result = check_history(history)
    assert result.ok is False, result.explanation
    assert result.key == history[victim].key


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 40), st.data())
def test_any_changed_read_in_a_sequential_history_is_caught(
    rng: random.Random, n_ops: int, data: st.DataObject
) -> None:
    # Without overlaps or unknown outcomes there is one order, so every read is pinned.
    history = generate_history(rng, clients=3, n_ops=n_ops, keys=2, sequential=True)
    reads = [i for i, op in enumerate(history) if op.kind == "get"]
    assume(reads)
    victim = data.draw(st.sampled_from(reads))
    wrong = data.draw(
        st.sampled_from([None, *VALUES, "ab"]).filter(lambda v: v != history[victim].result)
    )
    history[victim] = replace(history[victim], result=wrong)
    result = check_history(history)
    assert result.ok is False, result.explanation
    assert result.key == history[victim].key


@pytest.mark.parametrize("keys", [1, 4])
def test_a_large_concurrent_history_is_checked(keys: int) -> None:
    history = generate_history(
        random.Random(20240527), clients=5, n_ops=2000, keys=keys, timeout_chance=0.02
    )
    result: CheckResult = check_history(history)
    assert result.ok is True, result.explanation


# --------------------------------------------------------------------------------------------
# Agreement with the definition, on histories small enough to enumerate
# --------------------------------------------------------------------------------------------


def linearizable_by_definition(history: list[Operation]) -> bool:
    """Try every order: some sequence of all known-outcome operations and any subset of the
    unknown-outcome ones that respects real-time order and reproduces every known result."""

    def extend(done: frozenset[int], store: dict[str, str | None]) -> bool:
        waiting = [
            (i, op.ret) for i, op in enumerate(history) if op.ret is not None and i not in done
        ]
        if not waiting:
            return True
        for i, op in enumerate(history):
            # An operation cannot go next while one that returned before its call waits.
            if i in done or any(ret <= op.call for j, ret in waiting if j != i):
                continue
            result, new = reference_step(op.kind, op.value, op.expected, store.get(op.key))
            if op.ret is not None and result != op.result:
                continue
            if extend(done | {i}, {**store, op.key: new}):
                return True
        return False

    return extend(frozenset(), {})


@st.composite
def arbitrary_histories(draw: st.DrawFn) -> list[Operation]:
    """Up to 6 operations on 1 or 2 keys with random intervals and random (often wrong)
    results: most are not linearizable, some are."""
    history = []
    for client in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["get", "put", "delete", "append", "cas"]))
        call = draw(st.integers(0, 8))
        duration = draw(st.one_of(st.none(), st.integers(1, 6)))
        value = draw(st.sampled_from("ab")) if kind in ("put", "append", "cas") else None
        expected = draw(st.sampled_from([None, "a", "b"])) if kind == "cas" else None
        result: object = None
        if kind == "get":
            result = draw(st.sampled_from([None, "a", "b", "ab"]))
        elif kind == "append":
            result = draw(st.sampled_from(["a", "b", "ab", "ba"]))
        elif kind == "cas":
            result = draw(st.booleans())
        history.append(
            Operation(
                client_id=client,
                kind=kind,
                key=draw(st.sampled_from(["x", "y"])),
                value=value,
                expected=expected,
                call=call,
                ret=None if duration is None else call + duration,
                result=result,
            )
        )
    return history


@settings(max_examples=1000, deadline=None)
@given(arbitrary_histories())
def test_verdicts_match_the_definition(history: list[Operation]) -> None:
    expected = linearizable_by_definition(history)
    result = check_history(history)
    assert result.ok is expected, result.explanation


@settings(max_examples=300, deadline=None)
@given(
    st.builds(
        generate_history,
        st.randoms(use_true_random=False),
        clients=st.integers(2, 4),
        n_ops=st.integers(1, 7),
        keys=st.just(1),
        timeout_chance=st.sampled_from([0.2, 0.5]),
    ),
    st.data(),
)
def test_verdicts_match_the_definition_near_valid_histories(
    history: list[Operation], data: st.DataObject
) -> None:
    # Valid histories with one result changed: the verdict is often close to the edge.
    known = [
        i
        for i, op in enumerate(history)
        if op.ret is not None and op.kind in ("get", "append", "cas")
    ]
    mutate = data.draw(st.booleans())
    if known and mutate:
        victim = data.draw(st.sampled_from(known))
        op = history[victim]
        wrong: object
        if op.kind == "cas":
            wrong = not op.result
        elif op.kind == "append":
            wrong = data.draw(st.sampled_from(["a", "b", "c", "ab", "ba", "abc"]))
        else:
            wrong = data.draw(st.sampled_from([None, "a", "b", "c", "ab"]))
        history[victim] = replace(op, result=wrong)
    assert check_history(history).ok is linearizable_by_definition(history)
