"""``LockService``: leases by the leader's proposed time, fencing tokens, mutual exclusion."""

from __future__ import annotations

import itertools
import random

import pytest

from framework.apps.locks import LockService
from framework.apps.objects import ObjectMachine, ReplicatedError, decode_outcome, encode_call
from framework.core.entries import Entry, EntryKind
from framework.statemachine import AppCommand, encode_app_command


class Cluster:
    """One lock machine fed entries as a log would: each call gets the next index, the
    time the (test's) leader proposes it at, and its client's next seq."""

    def __init__(self) -> None:
        self.m = ObjectMachine(LockService)
        self.seqs: dict[int, int] = {}

    def call(self, client: int, time: float, method: str, *args: object) -> object:
        self.seqs[client] = self.seqs.get(client, 0) + 1
        command = AppCommand(
            client_id=client,
            seq=self.seqs[client],
            time=time,
            payload=encode_call(method, args, {}),
        )
        index = self.m.applied_index + 1
        out = self.m.apply(
            Entry(index=index, term=1, kind=EntryKind.NORMAL, data=encode_app_command(command))
        )
        assert isinstance(out, bytes)
        return decode_outcome(out)


def test_a_lease_expires_by_the_leaders_proposed_time() -> None:
    c = Cluster()
    grant = c.call(1, 100.0, "acquire", "db", "alice", 10)
    assert grant == {"token": 1, "expires": 110.0}
    with pytest.raises(ReplicatedError, match="LockHeld: lock 'db' is held by 'alice'"):
        c.call(2, 109.9, "acquire", "db", "bob", 10)
    # alice vanished: at the proposal time 110 her lease is over, whatever the wall clock.
    assert c.call(2, 110.0, "acquire", "db", "bob", 10) == {"token": 3, "expires": 120.0}
    with pytest.raises(ReplicatedError, match="NotHolder"):
        c.call(1, 111.0, "release", "db", "alice", 1)


def test_renewing_keeps_the_token_and_a_new_grant_gets_a_higher_one() -> None:
    c = Cluster()
    first = c.call(1, 0.0, "acquire", "x", "a", 5)
    assert c.call(1, 4.0, "renew", "x", "a", first["token"], 5) == {  # type: ignore[index]
        "token": first["token"],
        "expires": 9.0,
    }  # type: ignore[index]
    assert c.call(1, 8.0, "release", "x", "a", first["token"]) == 8.0  # type: ignore[index]
    second = c.call(2, 8.5, "acquire", "x", "b", 5)
    assert second["token"] > first["token"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", "a", 1), "lock name ''"),
        (("x", "a" * 300, 1), "holder 'aaaa"),
        (("x", "a", 0), r"ttl 0: expected seconds in \(0, 86400\]"),
        (("x", "a", True), "ttl True"),
    ],
)
def test_bad_arguments_are_refused_naming_the_value(args: tuple[object, ...], message: str) -> None:
    c = Cluster()
    with pytest.raises(ReplicatedError, match=message):
        c.call(1, 0.0, "acquire", *args)
    assert c.m.obj.locks == {}  # type: ignore[attr-defined]


def test_random_histories_never_have_two_holders_and_tokens_strictly_increase() -> None:
    """A history checker: every successful grant is an interval [granted, end) where end is
    its lease's expiry, pulled in by a release or pushed out by renewals; no two grants of
    one lock by different holders may overlap, and grant tokens strictly increase."""
    rng = random.Random(1606)
    for _round in range(30):
        c = Cluster()
        now = 0.0
        held: dict[tuple[str, str], int] = {}  # (lock, holder) -> token the client thinks it has
        grants: list[dict[str, object]] = []  # per lock, in log order
        for _ in range(120):
            now += rng.choice([0.0, 0.5, 1.0, 3.0])  # leader time never goes back here
            client = rng.randrange(1, 5)
            holder, lock = f"c{client}", rng.choice(["a", "b"])
            op = rng.choice(["acquire", "acquire", "renew", "release"])
            try:
                if op == "acquire":
                    g = c.call(client, now, "acquire", lock, holder, rng.choice([1, 2, 5]))
                    current = [x for x in grants if x["lock"] == lock and x["open"]]
                    if (
                        current
                        and current[-1]["holder"] == holder
                        and current[-1]["token"] == g["token"]
                    ):  # type: ignore[index]
                        current[-1]["end"] = g["expires"]  # type: ignore[index]
                    else:
                        for x in current:
                            x["open"] = False
                        grants.append(
                            {
                                "lock": lock,
                                "holder": holder,
                                "token": g["token"],  # type: ignore[index]
                                "start": now,
                                "end": g["expires"],
                                "open": True,
                            }
                        )  # type: ignore[index]
                    held[(lock, holder)] = g["token"]  # type: ignore[index]
                elif op == "renew" and (lock, holder) in held:
                    g = c.call(client, now, "renew", lock, holder, held[(lock, holder)], 2)
                    mine = [x for x in grants if x["lock"] == lock and x["token"] == g["token"]]  # type: ignore[index]
                    mine[-1]["end"] = g["expires"]  # type: ignore[index]
                elif op == "release" and (lock, holder) in held:
                    c.call(client, now, "release", lock, holder, held.pop((lock, holder)))
                    mine = [x for x in grants if x["lock"] == lock and x["open"]]
                    mine[-1]["end"], mine[-1]["open"] = now, False
            except ReplicatedError as exc:
                assert exc.error in ("LockHeld", "NotHolder"), exc
        for lock in ("a", "b"):
            mine = [x for x in grants if x["lock"] == lock]
            tokens = [x["token"] for x in mine]
            assert tokens == sorted(set(tokens)), tokens  # strictly increasing
            for earlier, later in itertools.pairwise(mine):
                assert later["start"] >= earlier["end"], (earlier, later)  # never two holders
        assert len(grants) > 5  # the history has handovers to check
