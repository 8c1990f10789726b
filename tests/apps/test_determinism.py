"""No clock and no randomness inside a ``@replicated`` method (framework/apps/determinism.py):
the call raises ``NondeterministicCall`` to its caller, identically on every replica; the
leader's proposal time (``self.now``) is what a method uses."""

from __future__ import annotations

import logging
import os
import random
import secrets
import threading
import time
import uuid

import pytest

from framework.apps.determinism import GUARDED, NondeterministicCall, deterministic, release
from framework.apps.objects import (
    ObjectMachine,
    ReplicatedError,
    ReplicatedObject,
    decode_outcome,
    encode_call,
    replicated,
)
from framework.core.entries import Entry, EntryKind
from framework.statemachine import AppCommand, encode_app_command


class Sloppy(ReplicatedObject):
    app_name = "tests.sloppy"

    stamps: list[float]

    def __init__(self) -> None:
        self.stamps = []

    @replicated
    def stamp_with_own_clock(self) -> float:
        self.stamps.append(-1.0)  # a change before the bad call stays, as for any exception
        return time.time()

    @replicated
    def stamp(self) -> float:
        logging.getLogger("tests.sloppy").warning("stamping")  # a record reads the clock: allowed
        seen: list[float] = []
        worker = threading.Thread(target=lambda: seen.append(time.monotonic()))
        worker.start()  # another thread (the runtime's workers) is not refused
        worker.join()
        self.stamps.append(self.now)
        return self.now

    @replicated
    def roll(self) -> int:
        return random.randint(1, 6)

    @replicated
    def token(self) -> str:
        return os.urandom(4).hex()

    @replicated
    def new_id(self) -> str:
        return str(uuid.uuid4())  # reads os.urandom

    @replicated
    def secret(self) -> str:
        return secrets.token_hex(8)

    @replicated
    def elapsed(self) -> float:
        return time.perf_counter()


def _call(m: ObjectMachine, index: int, method: str, now: float = 5000.0) -> bytes:
    command = AppCommand(client_id=1, seq=index, time=now, payload=encode_call(method, (), {}))
    result = m.apply(
        Entry(index=index, term=1, kind=EntryKind.NORMAL, data=encode_app_command(command))
    )
    assert isinstance(result, bytes)
    return result


@pytest.mark.parametrize(
    ("method", "read"),
    [
        ("stamp_with_own_clock", "time.time()"),
        ("roll", "random.randint()"),
        ("token", "os.urandom()"),
        ("new_id", "os.urandom()"),
        ("elapsed", "time.perf_counter()"),
        ("secret", "secrets.token_hex()"),
    ],
)
def test_a_clock_or_random_read_is_refused_the_same_on_every_replica(
    method: str, read: str
) -> None:
    a, b = ObjectMachine(Sloppy), ObjectMachine(Sloppy)
    out_a, out_b = _call(a, 1, method), _call(b, 1, method)
    assert out_a == out_b  # the same result bytes on every replica
    with pytest.raises(ReplicatedError) as caught:
        decode_outcome(out_a)
    assert caught.value.error == "NondeterministicCall"
    assert f"{read} called inside the replicated method Sloppy.{method}" in caught.value.message
    assert a.snapshot() == b.snapshot()


def test_the_leaders_time_is_what_a_method_uses_and_logging_and_threads_pass() -> None:
    a, b = ObjectMachine(Sloppy), ObjectMachine(Sloppy)
    assert decode_outcome(_call(a, 1, "stamp", now=1234.5)) == 1234.5
    assert decode_outcome(_call(b, 1, "stamp", now=1234.5)) == 1234.5
    assert a.obj.stamps == b.obj.stamps == [1234.5]  # type: ignore[attr-defined]


def test_the_guards_go_at_the_first_read_outside_a_method() -> None:
    release()  # an earlier test's guards may still wait for their first outside read
    originals = [getattr(module, name) for module, name in GUARDED]
    assert not any(hasattr(f, "__wrapped__") for f in originals)
    m = ObjectMachine(Sloppy)
    _call(m, 1, "roll")
    _call(m, 2, "stamp")  # a batch: the guards stay between the two calls
    assert time.time() > 0  # outside any method the clock answers, and the guards go
    assert [getattr(module, name) for module, name in GUARDED] == originals
    with pytest.raises(ZeroDivisionError), deterministic("M.f"):
        _ = 1 / 0
    release()
    assert [getattr(module, name) for module, name in GUARDED] == originals


def test_nested_and_other_thread_blocks_keep_the_guard_until_the_last_ends() -> None:
    inner_ok = threading.Event()
    done = threading.Event()

    def other() -> None:
        with deterministic("Other.f"):
            inner_ok.set()
            done.wait(5)

    worker = threading.Thread(target=other)
    worker.start()
    assert inner_ok.wait(5)
    try:
        with (
            deterministic("Main.f"),
            pytest.raises(NondeterministicCall, match=r"inside the replicated method Main\.f"),
        ):
            time.time()
        with pytest.raises(NondeterministicCall), deterministic("Main.g"):
            random.random()
        assert time.time() > 0  # this thread is outside any method; the guard lets it pass
    finally:
        done.set()
        worker.join()
    time.time()  # the first read outside any method takes the guards away
    assert time.time.__name__ == "time" and not hasattr(time.time, "__wrapped__")
