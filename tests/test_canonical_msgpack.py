"""Canonical msgpack: the bytes of msgspec's ``order="deterministic"``, without its sort.

The crash this replaces: msgspec's own key sort recursed once per key on some key orders
(a key that sorts last inserted first, then ascending keys) and overflowed the C stack:
SIGSEGV in ``bench_snapshot_pause.py --modes whole`` at 100,000 keys. It is reproduced here
in a child process (a crash there must not take pytest with it) on a worker thread with a
1 MiB stack, so 20,000 keys are enough to overflow it.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.canonical_msgpack import encode_canonical
from framework.sessions import Session

_REPO = Path(__file__).resolve().parents[1]

_LARGE_STATES = textwrap.dedent(
    """
    import threading

    from framework.apps.objects import (
        ObjectMachine, ReplicatedObject, decode_outcome, encode_call, replicated,
    )
    from framework.core.entries import Entry
    from framework.statemachine import (
        AppCommand, KVStateMachine, Put, Request, encode_app_command, encode_request,
    )

    # "warm" sorts after every "key-..." and comes first: the order that defeated the sort.
    KEYS = ["warm", *(f"key-{i:08d}" for i in range(20_000))]


    class Catalogue(ReplicatedObject):
        app_name = "tests.catalogue"
        items: dict[str, str]

        def __init__(self) -> None:
            self.items = {}

        @replicated
        def fill(self, keys: list[str]) -> dict[str, str]:
            self.items.update(dict.fromkeys(keys, "v"))
            return self.items


    def main() -> None:
        kv = KVStateMachine()
        for i, key in enumerate(KEYS, start=1):
            request = Request(client_id=1, seq=i, op=Put(key=key, value="v"))
            kv.apply(Entry(term=1, index=i, data=encode_request(request)))
        copy = KVStateMachine()
        copy.restore(kv.snapshot())
        assert list(copy._data) == sorted(KEYS), "the snapshot's keys are sorted"

        objects = ObjectMachine(Catalogue)
        call = encode_call("fill", (KEYS,), {})
        command = AppCommand(client_id=1, seq=1, time=0.0, payload=call)
        outcome = objects.apply(Entry(term=1, index=1, data=encode_app_command(command)))
        assert list(decode_outcome(outcome)) == sorted(KEYS)
        restored = ObjectMachine(Catalogue)
        restored.restore(objects.snapshot())
        assert restored.obj.items == dict.fromkeys(KEYS, "v")
        print("encoded")


    threading.stack_size(1024 * 1024)  # a worker thread's stack, as small as some systems'
    worker = threading.Thread(target=main)
    worker.start()
    worker.join()
    """
)


def test_large_maps_in_a_defeating_key_order_encode_on_a_small_stack() -> None:
    # Before: the child died with SIGSEGV (returncode -11) in msgspec's _AssocList_sort_inner.
    done = subprocess.run(
        [sys.executable, "-c", _LARGE_STATES],
        cwd=_REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "encoded"


_DETERMINISTIC = msgspec.msgpack.Encoder(order="deterministic")

_keys = st.text(max_size=6)
_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_leaves = (
    st.none()
    | st.booleans()
    | _ints
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.datetimes(timezones=st.just(datetime.UTC))
    | st.uuids()
    | st.frozensets(_ints, max_size=20)
)
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=30) | st.dictionaries(_keys, inner, max_size=40),
    max_leaves=200,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a shared machine
@given(_values)
def test_the_bytes_are_those_of_msgspecs_deterministic_order(value: object) -> None:
    # Dicts of more than 16 keys go through msgspec's quicksort (smaller ones through its
    # insertion sort), and keys include non-ASCII text: code point order is UTF-8 order.
    assert encode_canonical(value) == _DETERMINISTIC.encode(value)


def test_keys_of_one_other_type_are_sorted_at_any_size_and_mixed_keys_are_refused() -> None:
    small = {2: "b", 1: "a"}
    large = {k: str(k) for k in range(40, 0, -1)}
    assert encode_canonical(small) == msgspec.msgpack.encode(dict(sorted(small.items())))
    assert encode_canonical(large) == msgspec.msgpack.encode(dict(sorted(large.items())))
    with pytest.raises(TypeError):
        encode_canonical({1: "a", "b": "c"})


def test_structs_raw_and_sessions_keep_their_encoding() -> None:
    class Body(msgspec.Struct, frozen=True, kw_only=True):
        index: int
        data: dict[str, str]
        sessions: list[Session[bytes]]
        state: msgspec.Raw

    body = Body(
        index=3,
        data={"b": "1", "a": "2", "é": "3"},
        sessions=[Session(client_id=1, last_seq=2, last_index=3, result=b"ok")],
        state=msgspec.Raw(_DETERMINISTIC.encode({"z": uuid.UUID(int=1), "y": {3, 1, 2}})),
    )
    assert encode_canonical(body) == _DETERMINISTIC.encode(body)
    assert msgspec.msgpack.decode(encode_canonical(body), type=Body) == body
