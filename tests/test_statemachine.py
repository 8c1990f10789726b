"""The KV state machine: commands, exactly-once sessions (dissertation §6.3), snapshots."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.core.entries import Entry, EntryKind
from framework.statemachine import (
    SNAPSHOT_MAGIC,
    Append,
    BadClientRequest,
    BadCommand,
    BadSnapshot,
    Cas,
    ClientCommand,
    ClientQuery,
    Command,
    CommandError,
    Delete,
    Get,
    KVResult,
    KVStateMachine,
    OutOfOrderApply,
    Put,
    Request,
    StaleRequest,
    StateMachine,
    decode_request,
    encode_request,
    snapshot_application,
    snapshot_header,
)
from framework.transport.wire import AppCall, KVOp


def request_entry(index: int, client_id: int, seq: int, op: Command) -> Entry:
    data = encode_request(Request(client_id=client_id, seq=seq, op=op))
    return Entry(term=1, index=index, data=data)


class Driver:
    """Feeds a machine consecutive entries so each test reads as a list of requests."""

    def __init__(self, machine: KVStateMachine | None = None) -> None:
        self.machine = machine if machine is not None else KVStateMachine()

    def request(self, client_id: int, seq: int, op: Command) -> KVResult:
        index = self.machine.applied_index + 1
        return self.machine.apply(request_entry(index, client_id, seq, op))

    def raw(self, data: bytes, kind: EntryKind = EntryKind.NORMAL) -> KVResult:
        index = self.machine.applied_index + 1
        return self.machine.apply(Entry(term=1, index=index, kind=kind, data=data))


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------

OP_TABLE = [
    # (stored before, op, result, stored after)
    ({}, Get(key="k"), None, {}),
    ({"k": "v"}, Get(key="k"), "v", {"k": "v"}),
    ({}, Put(key="k", value="v"), None, {"k": "v"}),
    ({"k": "old"}, Put(key="k", value="new"), None, {"k": "new"}),
    ({"k": "v"}, Put(key="k", value=""), None, {"k": ""}),
    ({"k": "v", "j": "w"}, Delete(key="k"), None, {"j": "w"}),
    ({}, Delete(key="k"), None, {}),
    ({}, Append(key="k", value="ab"), "ab", {"k": "ab"}),
    ({"k": "ab"}, Append(key="k", value="cd"), "abcd", {"k": "abcd"}),
    ({"k": "ab"}, Append(key="k", value=""), "ab", {"k": "ab"}),
    ({}, Cas(key="k", expected=None, new="v"), True, {"k": "v"}),
    ({"k": "v"}, Cas(key="k", expected=None, new="w"), False, {"k": "v"}),
    ({"k": "v"}, Cas(key="k", expected="v", new="w"), True, {"k": "w"}),
    ({"k": "v"}, Cas(key="k", expected="x", new="w"), False, {"k": "v"}),
    ({}, Cas(key="k", expected="v", new="w"), False, {}),
    ({"k": ""}, Cas(key="k", expected=None, new="w"), False, {"k": ""}),
    ({"k": ""}, Cas(key="k", expected="", new="w"), True, {"k": "w"}),
]


@pytest.mark.parametrize(("before", "op", "result", "after"), OP_TABLE)
def test_each_command(
    before: dict[str, str], op: Command, result: KVResult, after: dict[str, str]
) -> None:
    driver = Driver()
    for client_id, (key, value) in enumerate(sorted(before.items()), start=100):
        driver.request(client_id, 1, Put(key=key, value=value))
    assert driver.request(1, 1, op) == result
    for key in {*before, *after, "k"}:
        assert driver.machine.read(key) == after.get(key)
    assert len(driver.machine) == len(after)


@pytest.mark.parametrize("op", [row[1] for row in OP_TABLE])
def test_request_encoding_round_trips(op: Command) -> None:
    request = Request(client_id=7, seq=2**63, op=op)
    assert decode_request(encode_request(request)) == request


GOOD = encode_request(Request(client_id=1, seq=1, op=Put(key="k", value="v")))
GARBAGE = [
    # (data, fragment the message must contain)
    (b"", "truncated"),
    (GOOD[:-1], "truncated"),
    (b"\xc1", "invalid"),
    (msgspec.msgpack.encode([0, 1, ["put", "k", "v"]]), "`$[0]`"),
    (msgspec.msgpack.encode([1, 0, ["put", "k", "v"]]), "`$[1]`"),
    (msgspec.msgpack.encode([1, 1, ["frob", "k"]]), "'frob'"),
    (msgspec.msgpack.encode([1, 1, ["put", "k", 5]]), "Expected `str`"),
    (msgspec.msgpack.encode([1, 1, ["put", "k"]]), "at least length 3"),
    (msgspec.msgpack.encode({"client_id": 1}), "Expected `array`"),
]


@pytest.mark.parametrize(("data", "fragment"), GARBAGE)
def test_decode_request_names_what_is_wrong(data: bytes, fragment: str) -> None:
    with pytest.raises(BadCommand) as caught:
        decode_request(data)
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert fragment.lower() in message.lower()
    assert f"({len(data)} bytes)" in message


def test_read_does_not_touch_sessions() -> None:
    driver = Driver()
    driver.request(1, 1, Put(key="k", value="v"))
    before = driver.machine.snapshot()
    assert driver.machine.read("k") == "v"
    assert driver.machine.read("missing") is None
    assert driver.machine.snapshot() == before


def test_kv_machine_is_a_state_machine() -> None:
    machine: StateMachine = KVStateMachine()
    assert isinstance(machine, StateMachine)
    assert machine.applied_index == 0


# --------------------------------------------------------------------------------------
# Entries that are not commands
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [EntryKind.NOOP, EntryKind.FLAGS, EntryKind.CONF_CHANGE])
def test_non_command_entries_are_recorded_and_ignored(kind: EntryKind) -> None:
    driver = Driver()
    driver.request(1, 1, Put(key="k", value="v"))
    # Data that would be a command if the kind were NORMAL must not be executed.
    data = encode_request(Request(client_id=1, seq=2, op=Delete(key="k")))
    assert driver.raw(data, kind) is None
    assert driver.machine.applied_index == 2
    assert driver.machine.read("k") == "v"
    assert driver.request(1, 2, Get(key="k")) == "v"  # seq 2 was not consumed


def test_corrupt_command_is_an_identical_error_on_every_replica() -> None:
    """A committed garbage entry must neither crash a replica nor make replicas differ."""
    replicas = [Driver(), Driver()]
    for driver in replicas:
        driver.request(1, 1, Put(key="k", value="v"))
    before = replicas[0].machine.snapshot()
    results = [driver.raw(b"\x93\x01") for driver in replicas]
    assert results[0] == results[1]
    assert isinstance(results[0], CommandError)
    assert results[0].index == 2
    assert "truncated" in results[0].message
    for driver in replicas:
        assert driver.machine.applied_index == 2
        assert driver.request(1, 2, Get(key="k")) == "v"
    assert replicas[0].machine.snapshot() == replicas[1].machine.snapshot() != before


@pytest.mark.parametrize("index", [0, 1, 3, 5])
def test_entries_must_be_applied_once_each_in_order(index: int) -> None:
    driver = Driver()
    driver.request(1, 1, Put(key="k", value="v"))
    before = driver.machine.snapshot()
    with pytest.raises(OutOfOrderApply, match=f"entry index {index} .* expected 2"):
        driver.machine.apply(request_entry(index, 1, 2, Put(key="k", value="w")))
    assert driver.machine.snapshot() == before


# --------------------------------------------------------------------------------------
# Sessions (dissertation §6.3)
# --------------------------------------------------------------------------------------


def test_a_retried_request_is_applied_once_and_answered_the_same() -> None:
    driver = Driver()
    assert driver.request(1, 1, Append(key="k", value="x")) == "x"
    assert driver.request(1, 1, Append(key="k", value="x")) == "x"
    assert driver.machine.read("k") == "x"
    assert driver.request(1, 2, Append(key="k", value="y")) == "xy"


def test_dedup_returns_the_first_result_even_after_other_clients_wrote() -> None:
    driver = Driver()
    assert driver.request(1, 1, Cas(key="k", expected=None, new="a")) is True
    driver.request(2, 1, Put(key="k", value="b"))
    # Re-executing the CAS now would fail; the retry must see the original answer.
    assert driver.request(1, 1, Cas(key="k", expected=None, new="a")) is True
    assert driver.machine.read("k") == "b"


def test_sessions_are_per_client() -> None:
    driver = Driver()
    assert driver.request(1, 1, Append(key="k", value="a")) == "a"
    assert driver.request(2, 1, Append(key="k", value="b")) == "ab"
    assert driver.machine.session_count() == 2


def test_a_stale_request_is_never_applied() -> None:
    driver = Driver()
    driver.request(1, 1, Append(key="k", value="a"))
    driver.request(1, 2, Append(key="k", value="b"))
    result = driver.request(1, 1, Append(key="k", value="a"))
    assert result == StaleRequest(client_id=1, seq=1, last_seq=2)
    assert driver.machine.read("k") == "ab"
    # The session still answers a retry of the latest request.
    assert driver.request(1, 2, Append(key="k", value="b")) == "ab"


def test_seq_may_skip_numbers() -> None:
    """A request that never reached the log leaves a gap; the next one still applies."""
    driver = Driver()
    driver.request(1, 1, Put(key="k", value="a"))
    assert driver.request(1, 5, Append(key="k", value="b")) == "ab"
    assert driver.request(1, 5, Append(key="k", value="b")) == "ab"


def test_max_sessions_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_sessions must be at least 1, got 0"):
        KVStateMachine(max_sessions=0)


def test_the_least_recently_used_session_is_evicted() -> None:
    driver = Driver(KVStateMachine(max_sessions=2))
    driver.request(1, 1, Append(key="k", value="a"))
    driver.request(2, 1, Append(key="k", value="b"))
    driver.request(3, 1, Append(key="k", value="c"))  # evicts client 1
    assert driver.machine.session_count() == 2
    # The documented trade-off: an evicted client's retry is applied a second time.
    assert driver.request(1, 1, Append(key="k", value="a")) == "abca"  # evicts client 2
    # Clients 3 and 1 are still remembered.
    assert driver.request(3, 1, Append(key="k", value="c")) == "abc"
    assert driver.request(1, 1, Append(key="k", value="a")) == "abca"
    assert driver.machine.read("k") == "abca"


def test_any_request_refreshes_a_session_even_a_duplicate() -> None:
    driver = Driver(KVStateMachine(max_sessions=2))
    driver.request(1, 1, Append(key="k", value="a"))
    driver.request(2, 1, Append(key="k", value="b"))
    driver.request(1, 1, Append(key="k", value="a"))  # duplicate: client 1 is now newest
    driver.request(3, 1, Append(key="k", value="c"))  # so client 2 is evicted
    assert driver.request(1, 1, Append(key="k", value="a")) == "a"
    assert driver.request(2, 1, Append(key="k", value="b")) == "abcb"


# --------------------------------------------------------------------------------------
# Snapshots
# --------------------------------------------------------------------------------------


def test_snapshot_round_trip_keeps_data_sessions_and_index() -> None:
    source = Driver()
    source.request(1, 1, Put(key="a", value="1"))
    source.request(2, 4, Cas(key="a", expected="1", new="2"))
    source.request(3, 1, Get(key="a"))
    source.raw(b"", EntryKind.NOOP)
    snap = source.machine.snapshot()

    target = Driver()
    target.request(9, 1, Put(key="stale", value="x"))  # replaced, not merged
    target.machine.restore(snap)
    assert target.machine.applied_index == 4
    assert target.machine.read("a") == "2"
    assert target.machine.read("stale") is None
    assert target.machine.snapshot() == snap
    # Dedup works after restore: retries get their cached results and change nothing.
    assert target.request(4, 1, Put(key="a", value="3")) is None
    assert target.request(2, 4, Cas(key="a", expected="1", new="2")) is True
    assert target.request(3, 1, Get(key="a")) == "2"
    assert target.request(1, 1, Put(key="a", value="1")) is None
    assert target.machine.read("a") == "3"
    assert target.request(2, 3, Put(key="a", value="x")) == StaleRequest(
        client_id=2, seq=3, last_seq=4
    )
    assert target.machine.read("a") == "3"
    # And the log continues from the snapshot's index.
    assert target.machine.applied_index == 9


def test_eviction_order_survives_a_restore() -> None:
    driver = Driver(KVStateMachine(max_sessions=2))
    driver.request(2, 1, Append(key="k", value="b"))
    driver.request(1, 1, Append(key="k", value="a"))
    driver.request(2, 1, Append(key="k", value="b"))  # client 2 newest again
    restored = Driver(KVStateMachine(max_sessions=2))
    restored.machine.restore(driver.machine.snapshot())
    restored.request(3, 1, Append(key="k", value="c"))  # must evict client 1, not 2
    assert restored.request(2, 1, Append(key="k", value="b")) == "b"
    assert restored.request(1, 1, Append(key="k", value="a")) == "baca"


def test_restore_into_a_smaller_bound_trims_least_recently_used() -> None:
    driver = Driver()
    for client_id in (1, 2, 3):
        driver.request(client_id, 1, Append(key="k", value=str(client_id)))
    small = Driver(KVStateMachine(max_sessions=1))
    small.machine.restore(driver.machine.snapshot())
    assert small.machine.session_count() == 1
    assert small.request(3, 1, Append(key="k", value="3")) == "123"
    assert small.request(2, 1, Append(key="k", value="2")) == "1232"


def snapshot_bytes(body: object, version: int = 1) -> bytes:
    return bytes((version,)) + msgspec.msgpack.encode(body)


def body(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "applied_index": 5,
        "data": {"k": "v"},
        "sessions": [[1, 1, 2, None], [2, 3, 4, "v"]],
    }
    fields.update(changes)
    return fields


def test_the_snapshot_helpers_build_a_valid_snapshot() -> None:
    """Guards the garbage table below: each row differs from a good snapshot in one way."""
    machine = KVStateMachine()
    machine.restore(snapshot_bytes(body()))
    assert machine.applied_index == 5
    assert machine.read("k") == "v"
    assert machine.session_count() == 2


BAD_SNAPSHOTS = [
    (b"", "empty snapshot"),
    (snapshot_bytes(body(), version=3), "version 3 is not supported (expected 1 or 2)"),
    (snapshot_bytes(body())[:-1], "truncated"),
    (b"\x01\xc1", "malformed"),
    (snapshot_bytes([1, 2, 3]), "Expected `object`, got `array`"),
    (snapshot_bytes(body(applied_index=-1)), "`$.applied_index`"),
    (snapshot_bytes(body(data={"k": 1})), "`$.data[...]`"),
    (snapshot_bytes(body(sessions=[[0, 1, 2, None]])), "`$.sessions[0][0]`"),
    (snapshot_bytes(body(sessions=[[1, 1, 2, 3.5]])), "`$.sessions[0][3]`"),
    (
        snapshot_bytes(body(sessions=[[1, 1, 2, None], [1, 2, 3, None]])),
        "sessions[1] (client 1): client appears twice",
    ),
    (
        snapshot_bytes(body(sessions=[[1, 1, 4, None], [2, 1, 3, None]])),
        "sessions[1] (client 2): last_index 3 is not above the previous session's 4",
    ),
    (
        snapshot_bytes(body(sessions=[[1, 1, 6, None]])),
        "sessions[0] (client 1): last_index 6 is beyond applied_index 5",
    ),
]


def record(value: object) -> bytes:
    encoded = msgspec.msgpack.encode(value)
    return len(encoded).to_bytes(4, "big") + encoded


BEGIN_R = record(["begin", 5, 1])
KEYS_R = record(["keys", {"k": "v"}])
END_R = record(["end", [[1, 1, 2, None], [2, 3, 4, "v"]]])

BAD_CHUNKED = [  # format version 2 (snapshot_chunks), read a record at a time
    (b"\x02" + BEGIN_R + KEYS_R, "ends without its end record"),
    (b"\x02" + BEGIN_R + KEYS_R + END_R[:-1], "snapshot ends inside a record: "),
    (b"\x02" + BEGIN_R + KEYS_R + END_R + b"\x00", "inside a record length (1 of 4 bytes)"),
    (b"\x02" + BEGIN_R + KEYS_R + END_R + END_R, "goes on after its end record"),
    (b"\x02" + KEYS_R + END_R, "starts with _Keys: expected begin"),
    (b"\x02" + BEGIN_R + KEYS_R + KEYS_R + END_R, "more than the 1 keys it declares"),
    (b"\x02" + BEGIN_R + END_R, "holds 0 keys; it declares 1"),
    (b"\x02" + BEGIN_R + BEGIN_R + END_R, "a second begin record"),
    (b"\x02\xff\xff\xff\xff", "record of 4294967295 bytes: expected at most 67108864"),
    (b"\x02" + record(["begin", -1, 0]) + END_R, "malformed"),
    (b"\x02" + BEGIN_R + record(["keys", {"k": 1}]) + END_R, "malformed"),
    (
        b"\x02" + BEGIN_R + KEYS_R + record(["end", [[1, 1, 6, None]]]),
        "sessions[0] (client 1): last_index 6 is beyond applied_index 5",
    ),
]


def test_the_chunked_helpers_build_a_valid_snapshot() -> None:
    """Guards the chunked garbage table: each row differs from this one in one way."""
    machine = KVStateMachine()
    machine.restore(b"\x02" + BEGIN_R + KEYS_R + END_R)
    assert (machine.applied_index, machine.read("k"), machine.session_count()) == (5, "v", 2)


@pytest.mark.parametrize(("data", "fragment"), BAD_SNAPSHOTS + BAD_CHUNKED)
def test_restore_of_garbage_raises_and_changes_nothing(data: bytes, fragment: str) -> None:
    driver = Driver()
    driver.request(1, 1, Put(key="k", value="v"))
    before = driver.machine.snapshot()
    with pytest.raises(BadSnapshot) as caught:
        driver.machine.restore(data)
    assert fragment in str(caught.value)
    assert driver.machine.snapshot() == before
    assert driver.request(1, 1, Put(key="k", value="w")) is None
    assert driver.machine.read("k") == "v"


def test_snapshots_do_not_depend_on_insertion_order() -> None:
    """Keys are sorted in the snapshot, so equal states give equal bytes."""
    first, second = KVStateMachine(), KVStateMachine()
    first.restore(snapshot_bytes(body(data={"a": "1", "b": "2"}, sessions=[])))
    second.restore(snapshot_bytes(body(data={"b": "2", "a": "1"}, sessions=[])))
    assert first.snapshot() == second.snapshot()


# --------------------------------------------------------------------------------------
# Property: a snapshot + restore midway changes nothing observable
# --------------------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c"])
VALUES = st.sampled_from(["", "x", "yz"])
OPS = st.one_of(
    st.builds(Get, key=KEYS),
    st.builds(Put, key=KEYS, value=VALUES),
    st.builds(Delete, key=KEYS),
    st.builds(Append, key=KEYS, value=VALUES),
    st.builds(Cas, key=KEYS, expected=st.none() | VALUES, new=VALUES),
)
# seq is drawn as an offset from the client's last seq: -1 (stale), 0 (retry), +1, +2.
STEPS = st.one_of(
    st.tuples(st.just("request"), st.integers(1, 5), st.integers(-1, 2), OPS),
    st.tuples(st.just("garbage"), st.binary(max_size=8)),
    st.tuples(st.just("noop")),
)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(STEPS, max_size=60),
    split=st.integers(0, 60),
    max_sessions=st.integers(1, 6),
)
def test_snapshot_and_restore_midway_ends_in_the_same_state(
    steps: list[tuple[object, ...]], split: int, max_sessions: int
) -> None:
    plain = KVStateMachine(max_sessions=max_sessions)
    restarted = KVStateMachine(max_sessions=max_sessions)
    last_seq: dict[int, int] = {}
    for position, step in enumerate(steps):
        if position == split:
            fresh = KVStateMachine(max_sessions=max_sessions)
            fresh.restore(restarted.snapshot())
            restarted = fresh
        index = plain.applied_index + 1
        match step:
            case ("request", int(client_id), int(offset), op):
                seq = max(1, last_seq.get(client_id, 1) + offset)
                last_seq[client_id] = max(seq, last_seq.get(client_id, 1))
                assert isinstance(op, Get | Put | Delete | Append | Cas)
                data = encode_request(Request(client_id=client_id, seq=seq, op=op))
                entry = Entry(term=1, index=index, data=data)
            case ("garbage", bytes(data)):
                entry = Entry(term=1, index=index, data=data)
            case _:
                entry = Entry(term=1, index=index, kind=EntryKind.NOOP)
        assert plain.apply(entry) == restarted.apply(entry)
    assert plain.snapshot() == restarted.snapshot()
    assert plain.applied_index == restarted.applied_index == len(steps)


# --------------------------------------------------------------------------------------
# The KV client protocol as the KV application's request codec; the snapshot header
# --------------------------------------------------------------------------------------

CODEC_TABLE: list[tuple[object, object]] = [
    (KVOp(op="get", key="k"), ClientQuery("k")),
    (
        KVOp(op="put", key="k", value="v", client_id=3, seq=4),
        ClientCommand(encode_request(Request(client_id=3, seq=4, op=Put(key="k", value="v")))),
    ),
    (
        KVOp(op="delete", key="k", client_id=3, seq=5),
        ClientCommand(encode_request(Request(client_id=3, seq=5, op=Delete(key="k")))),
    ),
    (
        KVOp(op="cas", key="k", expected=None, value="n", client_id=3, seq=6),
        ClientCommand(
            encode_request(Request(client_id=3, seq=6, op=Cas(key="k", expected=None, new="n")))
        ),
    ),
    (
        KVOp(op="put", key="k", value="v"),
        "put needs a client session: client_id=0 seq=0; expected both >= 1",
    ),
    (KVOp(op="append", key="k", client_id=1, seq=1), "append 'k' needs a value"),
    (
        AppCall(app="counter", payload=b""),
        "the cluster runs the application 'kv'; the request is for 'counter'",
    ),
]


@pytest.mark.parametrize(("body", "expected"), CODEC_TABLE)
def test_kv_requests_are_decoded_by_the_kv_machine(body: object, expected: object) -> None:
    machine = KVStateMachine()
    if isinstance(expected, str):
        with pytest.raises(BadClientRequest) as caught:
            machine.client_request(body, now=1.0)
        assert str(caught.value) == expected
    else:
        assert machine.client_request(body, now=1.0) == expected
    assert machine.applied_index == 0  # decoding changes nothing


def test_a_read_is_of_a_key() -> None:
    with pytest.raises(TypeError, match="a KV read is of a key \\(str\\), got bytes"):
        KVStateMachine().read(b"k")


def test_a_snapshot_names_its_application_and_one_without_a_header_is_kv() -> None:
    driver = Driver()
    driver.request(1, 1, Put(key="k", value="v"))
    data = driver.machine.snapshot()
    assert data.startswith(snapshot_header(driver.machine))
    assert snapshot_application(data)[0] == ("kv", "1")
    legacy = data[len(snapshot_header(driver.machine)) :]  # as written before headers
    for snapshot in (data, legacy):
        restored = KVStateMachine()
        restored.restore(snapshot)
        assert restored.read("k") == "v" and restored.applied_index == 1

    class Other:
        app_name, app_version = "kv", "2.0"

    other_version = snapshot_header(Other()) + legacy
    with pytest.raises(BadSnapshot) as caught:
        KVStateMachine().restore(other_version)
    assert str(caught.value) == (
        "the snapshot is of application 'kv' version 2.0; this node runs 'kv' version 1 "
        "(expected the same name and major version)"
    )
    with pytest.raises(BadSnapshot, match="application header of 65535 bytes"):
        KVStateMachine().restore(SNAPSHOT_MAGIC + b"\xff\xff")
