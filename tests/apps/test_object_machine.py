"""``ObjectMachine``: a user class applied from log entries, as every replica applies it."""

from __future__ import annotations

import msgspec
import pytest

from framework.apps.objects import (
    ObjectMachine,
    ReplicatedError,
    decode_outcome,
    encode_call,
)
from framework.core.entries import Entry, EntryKind
from framework.statemachine import (
    AppCommand,
    BadSnapshot,
    CommandError,
    KVStateMachine,
    StaleRequest,
    encode_app_command,
    snapshot_header,
)
from tests.apps.objects_fixtures import Account


def entry(
    index: int,
    method: str,
    *args: object,
    client: int = 7,
    seq: int | None = None,
    time: float = 1000.0,
) -> Entry:
    command = AppCommand(
        client_id=client,
        seq=index if seq is None else seq,
        time=time,
        payload=encode_call(method, args, {}),
    )
    return Entry(index=index, term=1, kind=EntryKind.NORMAL, data=encode_app_command(command))


def run(machine: ObjectMachine, *entries: Entry) -> list[object]:
    return [machine.apply(e) for e in entries]


def test_a_replicated_method_runs_with_the_leaders_time_and_the_entrys_index() -> None:
    m = ObjectMachine(Account)
    (out,) = run(m, entry(1, "deposit", 5, time=1234.5))
    assert decode_outcome(out) == 5
    assert m.obj.history == [(5, 1234.5)]
    assert decode_outcome(m.read(encode_call("read", (), {}))) == 5


def test_an_exception_is_a_result_identical_on_every_replica_and_changes_nothing() -> None:
    entries = [entry(1, "deposit", 3), entry(2, "withdraw", 10), entry(3, "withdraw", 1)]
    a, b = ObjectMachine(Account), ObjectMachine(Account)
    outs_a, outs_b = run(a, *entries), run(b, *entries)
    assert outs_a == outs_b  # the same bytes: error type and message included
    with pytest.raises(ReplicatedError, match="ValueError: balance 3 is less than 10"):
        decode_outcome(outs_a[1])
    assert a.obj.balance == b.obj.balance == 2
    assert a.snapshot() == b.snapshot()


def test_a_retried_call_takes_effect_once_and_an_older_one_is_stale() -> None:
    m = ObjectMachine(Account)
    first, retry = run(m, entry(1, "deposit", 5, seq=1), entry(2, "deposit", 5, seq=1))
    assert first == retry and m.obj.balance == 5
    run(m, entry(3, "deposit", 1, seq=2))
    (stale,) = run(m, entry(4, "deposit", 1, seq=1))
    assert isinstance(stale, StaleRequest) and m.obj.balance == 6


def test_bad_calls_are_errors_not_crashes() -> None:
    m = ObjectMachine(Account)
    garbage = Entry(index=1, term=1, kind=EntryKind.NORMAL, data=b"\xc1junk")
    (bad,) = run(m, garbage)
    assert isinstance(bad, CommandError)
    (unknown,) = run(m, entry(2, "read"))  # a query is not a replicated method
    with pytest.raises(ReplicatedError, match="no replicated method 'read'"):
        decode_outcome(unknown)
    assert m.applied_index == 2 and m.obj.balance == 0


def test_snapshot_and_restore_keep_state_types_and_sessions() -> None:
    m = ObjectMachine(Account)
    run(m, entry(1, "deposit", 5, time=10.0), entry(2, "deposit", 2, time=11.0))
    restored = ObjectMachine(Account)
    restored.restore(m.snapshot())
    assert restored.applied_index == 2
    assert restored.obj.history == [(5, 10.0), (2, 11.0)]  # tuples again, by annotation
    (retry,) = run(restored, entry(3, "deposit", 2, seq=2))
    assert decode_outcome(retry) == 7 and restored.obj.balance == 7  # the session survived


def test_a_snapshot_of_another_application_is_refused_and_changes_nothing() -> None:
    from framework.apps.locks import LockService

    locks = ObjectMachine(LockService)
    m = ObjectMachine(Account)
    run(m, entry(1, "deposit", 5))
    with pytest.raises(BadSnapshot, match=r"'raftmw\.locks'.*runs 'tests\.account'"):
        m.restore(locks.snapshot())
    with pytest.raises(BadSnapshot, match=r"names no application; this node runs 'tests\.account'"):
        m.restore(msgspec.msgpack.encode([1, 2]))
    with pytest.raises(BadSnapshot, match="not a snapshot of a replicated object"):
        m.restore(snapshot_header(m) + msgspec.msgpack.encode([1, 2]))
    with pytest.raises(BadSnapshot, match="of application 'kv' version 1; this node runs 'tests"):
        m.check_snapshot(KVStateMachine().snapshot())
    assert m.obj.balance == 5 and m.applied_index == 1
