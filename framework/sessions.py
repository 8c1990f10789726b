"""``ClientSessions``: exactly-once client commands (Raft dissertation §6.3), for every
application.

Theory of operation
-------------------
A client that times out retries the same command with the same ``(client_id, seq)``; the
first attempt may have committed too, so one command can appear in the log several times.
Every application (the KV machine, every replicated object, a hand-written ``StateMachine``)
keeps one ``ClientSessions`` table beside its state and asks it, for each command it
applies, whether to run it:

* ``seq > last``: a new command; ``lookup`` answers ``None``, the application runs it and
  ``record``\\ s ``(seq, result)``;
* ``seq == last``: a retry of the command already applied; ``lookup`` answers the remembered
  result and nothing runs, so the command takes effect exactly once;
* ``seq < last``: the client has moved past this command (it issues one at a time with
  increasing ``seq``); it never runs and the answer is ``StaleRequest``.

Only the last result per client is kept, so a client waits for one command's outcome before
it issues the next ``seq`` (``KVClient`` and ``ObjectClient`` do).

Sessions expire by log position, not by time, so expiry is identical on every replica: at
most ``max_sessions`` clients are remembered, and when a new client would exceed that, the
one whose latest command sits lowest in the log is forgotten. The trade-off the dissertation
names follows: a client silent for longer than ``max_sessions`` other clients' activity
loses its session, and a retry of a command that had in fact applied applies again. Every
replica must be configured with the same ``max_sessions``.

The table is part of the replicated state: ``rows()`` go into the application's snapshot
(least recently used first, so eviction continues identically after a restore) and
``restore(rows)`` takes them back after ``check_rows`` found nothing wrong with them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Annotated, Final, Generic, TypeVar

import msgspec

__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "ClientSessions",
    "Replay",
    "Session",
    "StaleRequest",
    "check_rows",
]

DEFAULT_MAX_SESSIONS: Final = 100_000

_Positive = Annotated[int, msgspec.Meta(ge=1)]

R = TypeVar("R")
"""What an application's sessions remember of a command's outcome: the KV machine's
``str | bool | None``, a replicated object's encoded ``Outcome`` (``bytes``). Any type
msgspec encodes; the application's snapshot decoder names it (``Session[...]``)."""


class StaleRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a command older than the client's last applied one; nothing changed."""

    client_id: int
    seq: int
    last_seq: int
    """The client's latest applied ``seq``, which it has already moved past ``seq`` to."""


class Session(msgspec.Struct, Generic[R], frozen=True, kw_only=True, array_like=True):
    """A client's latest applied command: the result returned for a retry of it."""

    client_id: _Positive
    last_seq: _Positive
    last_index: _Positive
    """Log index of the client's latest command (any outcome); orders eviction."""
    result: R


class Replay(msgspec.Struct, Generic[R], frozen=True):
    """``lookup``'s answer for a command that must not run: what to answer instead."""

    result: R | StaleRequest


class ClientSessions(Generic[R]):
    """One application's session table (see the module docstring)."""

    def __init__(self, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions!r}")
        self.max_sessions: Final = max_sessions
        # client_id -> session, least recently used first (by log index, hence identical on
        # every replica): the front is what eviction removes.
        self._sessions: OrderedDict[int, Session[R]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def lookup(self, client_id: int, seq: int, index: int) -> Replay[R] | None:
        """``None`` if the command at log ``index`` is new (run it, then ``record``); else
        the answer for a retry or a stale command, which must not run."""
        sessions = self._sessions
        session = sessions.get(client_id)
        if session is None or seq > session.last_seq:
            return None
        # Any command from the client, even a duplicate, shows it is alive.
        sessions.move_to_end(client_id)
        sessions[client_id] = Session(
            client_id=client_id,
            last_seq=session.last_seq,
            last_index=index,
            result=session.result,
        )
        if seq == session.last_seq:
            return Replay(session.result)
        return Replay(StaleRequest(client_id=client_id, seq=seq, last_seq=session.last_seq))

    def record(self, client_id: int, seq: int, index: int, result: R) -> None:
        """Remember that the new command ``seq`` at ``index`` ran with ``result``."""
        sessions = self._sessions
        sessions[client_id] = Session(
            client_id=client_id, last_seq=seq, last_index=index, result=result
        )
        sessions.move_to_end(client_id)
        while len(sessions) > self.max_sessions:
            sessions.popitem(last=False)

    def rows(self) -> list[Session[R]]:
        """The table for a snapshot, least recently used first."""
        return list(self._sessions.values())

    def restore(self, rows: Sequence[Session[R]]) -> None:
        """Replace the table with ``rows`` (already passed ``check_rows``). Rows from a
        replica with a larger bound (a misconfiguration) are trimmed the way eviction would
        have trimmed them: least recently used first."""
        sessions = OrderedDict((row.client_id, row) for row in rows)
        while len(sessions) > self.max_sessions:
            sessions.popitem(last=False)
        self._sessions = sessions


def check_rows(rows: Sequence[Session[R]], applied_index: int) -> str | None:
    """What is wrong with a snapshot's session rows (``None``: nothing): a client twice,
    rows out of least-recently-used order, or a row beyond ``applied_index``."""
    seen: set[int] = set()
    previous_index = 0
    for position, session in enumerate(rows):
        where = f"sessions[{position}] (client {session.client_id})"
        if session.client_id in seen:
            return f"{where}: client appears twice in the session table"
        if session.last_index <= previous_index:
            return (
                f"{where}: last_index {session.last_index} is not above the previous "
                f"session's {previous_index}; sessions must be in least-recently-used order"
            )
        if session.last_index > applied_index:
            return (
                f"{where}: last_index {session.last_index} is beyond applied_index {applied_index}"
            )
        seen.add(session.client_id)
        previous_index = session.last_index
    return None
