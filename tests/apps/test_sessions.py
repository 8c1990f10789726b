"""``ClientSessions``: one exactly-once table (dissertation §6.3), the same for the KV machine
and for every replicated object."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from framework.apps.objects import ObjectMachine, decode_outcome, encode_call
from framework.core.entries import Entry, EntryKind
from framework.sessions import ClientSessions, Replay, Session, StaleRequest, check_rows
from framework.statemachine import (
    AppCommand,
    Append,
    KVStateMachine,
    Request,
    encode_app_command,
    encode_request,
)
from tests.apps.objects_fixtures import Account


def test_new_retry_and_stale_commands() -> None:
    table: ClientSessions[str] = ClientSessions()
    assert table.lookup(1, 1, index=1) is None  # new: run it
    table.record(1, 1, 1, "first")
    assert table.lookup(1, 1, index=2) == Replay("first")  # a retry: the first result
    assert table.lookup(1, 3, index=3) is None  # seq may skip numbers
    table.record(1, 3, 3, "third")
    assert table.lookup(1, 2, index=4) == Replay(StaleRequest(client_id=1, seq=2, last_seq=3))
    # Every lookup, even of a duplicate, refreshed the session's position in the log.
    assert table.rows() == [Session(client_id=1, last_seq=3, last_index=4, result="third")]


def test_eviction_is_by_log_position_and_survives_a_restore() -> None:
    table: ClientSessions[None] = ClientSessions(max_sessions=2)
    table.record(1, 1, 1, None)
    table.record(2, 1, 2, None)
    table.lookup(1, 1, index=3)  # client 1 is active again; client 2 is now the oldest
    restored: ClientSessions[None] = ClientSessions(max_sessions=2)
    restored.restore(table.rows())
    for t in (table, restored):
        t.record(3, 1, 4, None)
        assert [row.client_id for row in t.rows()] == [1, 3]
    smaller: ClientSessions[None] = ClientSessions(max_sessions=1)
    smaller.restore(table.rows())  # trimmed least recently used first
    assert [row.client_id for row in smaller.rows()] == [3]


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([(1, 1, 2), (2, 1, 3)], None),
        ([(1, 1, 2), (1, 2, 3)], "sessions[1] (client 1): client appears twice"),
        ([(1, 1, 3), (2, 1, 2)], "last_index 2 is not above the previous session's 3"),
        ([(1, 1, 9)], "sessions[0] (client 1): last_index 9 is beyond applied_index 5"),
    ],
)
def test_snapshot_rows_are_checked(rows: list[tuple[int, int, int]], problem: str | None) -> None:
    sessions = [Session(client_id=c, last_seq=s, last_index=i, result=None) for c, s, i in rows]
    found = check_rows(sessions, applied_index=5)
    assert found == problem if problem is None else problem in str(found)


def test_max_sessions_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_sessions must be at least 1, got 0"):
        ClientSessions(max_sessions=0)


# -- the KV machine and a replicated object answer retries alike ------------------------------


def _kv_entry(index: int, client: int, seq: int) -> Entry:
    data = encode_request(Request(client_id=client, seq=seq, op=Append(key="k", value="x")))
    return Entry(index=index, term=1, kind=EntryKind.NORMAL, data=data)


def _object_entry(index: int, client: int, seq: int) -> Entry:
    command = AppCommand(
        client_id=client, seq=seq, time=1.0, payload=encode_call("deposit", (1,), {})
    )
    return Entry(index=index, term=1, kind=EntryKind.NORMAL, data=encode_app_command(command))


def _kv_effect(m: KVStateMachine) -> int:
    return len(m.read("k") or "")


def _object_effect(m: ObjectMachine) -> int:
    return int(decode_outcome(m.read(encode_call("read", (), {}))))  # type: ignore[call-overload]


MACHINES: list[
    tuple[Callable[[], object], Callable[[int, int, int], Entry], Callable[..., int]]
] = [
    (KVStateMachine, _kv_entry, _kv_effect),
    (lambda: ObjectMachine(Account), _object_entry, _object_effect),
]


@pytest.mark.parametrize(("machine", "entry", "effect"), MACHINES, ids=["kv", "object"])
def test_kv_and_objects_share_the_session_rules(
    machine: Callable[[], object],
    entry: Callable[[int, int, int], Entry],
    effect: Callable[..., int],
) -> None:
    m = machine()
    # (client, seq): new, retry, another client, new, stale, retry of the latest
    script = [(7, 1), (7, 1), (8, 1), (7, 2), (7, 1), (7, 2)]
    results = [m.apply(entry(i, c, s)) for i, (c, s) in enumerate(script, start=1)]  # type: ignore[attr-defined]
    assert effect(m) == 3  # three distinct commands took effect, each once
    assert results[1] == results[0] and results[5] == results[3]  # retries: first answer
    assert results[4] == StaleRequest(client_id=7, seq=1, last_seq=2)
    assert m.sessions.rows()[-1].last_index == 6  # type: ignore[attr-defined]  # one table type
    restored = machine()
    restored.restore(m.snapshot())  # type: ignore[attr-defined]
    assert restored.apply(entry(7, 7, 2)) == results[3]  # type: ignore[attr-defined]
    assert effect(restored) == 3  # the retry after a restore still took effect once
