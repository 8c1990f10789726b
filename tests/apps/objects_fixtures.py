"""Replicated classes the app tests share."""

from __future__ import annotations

import msgspec

from framework.apps.objects import ReplicatedObject, query, replicated
from framework.core.entries import Entry, EntryKind
from framework.sessions import ClientSessions, Session
from framework.statemachine import (
    BadCommand,
    ClientCommand,
    ClientQuery,
    CommandError,
    app_call_request,
    decode_app_command,
    open_snapshot,
    snapshot_header,
)


class Account(ReplicatedObject):
    """A balance that refuses to go negative: an exception inside a replicated method."""

    app_name = "tests.account"

    balance: int
    history: list[tuple[int, float]]

    def __init__(self) -> None:
        self.balance = 0
        self.history = []

    @replicated
    def deposit(self, amount: int) -> int:
        self.balance += amount
        self.history.append((amount, self.now))
        return self.balance

    @replicated
    def withdraw(self, amount: int) -> int:
        if amount > self.balance:
            raise ValueError(f"balance {self.balance} is less than {amount}")
        self.balance -= amount
        self.history.append((-amount, self.now))
        return self.balance

    @query
    def read(self) -> int:
        return self.balance

    @query(stale=True)
    def read_stale(self) -> int:
        return self.balance


class Tally:
    """A hand-written ``StateMachine`` (no ``ReplicatedObject``): what the seam asks of any
    application, with the shared pieces a machine uses to get sessions, ReadIndex reads and
    snapshots like the KV machine's. A write adds its payload (a decimal number) to the
    total; a read returns the total."""

    app_name = "tests.tally"
    app_version = "1"

    def __init__(self) -> None:
        self.sessions: ClientSessions[bytes] = ClientSessions()
        self.total = 0
        self._applied_index = 0

    @property
    def applied_index(self) -> int:
        return self._applied_index

    def client_request(self, body: object, *, now: float) -> ClientCommand | ClientQuery:
        return app_call_request(self, body, now=now)

    def apply(self, entry: Entry) -> object:
        self._applied_index = entry.index
        if entry.kind is not EntryKind.NORMAL:
            return None
        try:
            command = decode_app_command(entry.data)
        except BadCommand as exc:
            return CommandError(index=entry.index, message=str(exc))
        replay = self.sessions.lookup(command.client_id, command.seq, entry.index)
        if replay is not None:
            return replay.result
        self.total += int(command.payload)
        result = str(self.total).encode()
        self.sessions.record(command.client_id, command.seq, entry.index, result)
        return result

    def read(self, query: object) -> bytes:
        return str(self.total).encode()

    def snapshot(self) -> bytes:
        body = (self._applied_index, self.total, self.sessions.rows())
        return snapshot_header(self) + msgspec.msgpack.encode(body)

    def restore(self, data: bytes) -> None:
        decoder = msgspec.msgpack.Decoder(tuple[int, int, list[Session[bytes]]])
        applied, total, rows = decoder.decode(open_snapshot(data, self))
        self.sessions.restore(rows)
        self._applied_index, self.total = applied, total
