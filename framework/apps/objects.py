"""Replicate your own Python objects: ``ReplicatedObject``, ``@replicated``, ``@query``.

Theory of operation
-------------------
A subclass of ``ReplicatedObject`` is an application: ``ObjectMachine(cls)`` is the
``StateMachine`` that runs it on every replica. A call to a ``@replicated`` method becomes a
``Call`` (method name, positional and keyword arguments, msgpack-encoded), sent as an
``AppCall`` write with the caller's client session; the leader proposes it with its wall
clock (``AppCommand.time``); every replica decodes it and runs the method with ``self.now``
set to that time and ``self.index`` to the entry's log index. The method's return value, or
the exception it raised (its class name and message), is encoded as an ``Outcome``: the
same bytes on every replica, handed to the caller, where an exception is raised again as
``ReplicatedError``. The state is left as the method left it, on every replica alike.

A ``@query`` method is answered without the log, from a replica's applied state: on the
leader after ReadIndex (linearizable), or with ``stale=True`` from any node's state as it
is (an explicit opt-in). A query must not change the state; nothing checks that, but its
changes would exist on one node only.

Determinism: a replicated method must depend only on its arguments, ``self`` and
``self.now``/``self.index`` (the leader's clock, carried in the entry): that is what makes
every replica compute the same state. While it runs, reading a clock or a random source
through ``time``, ``random`` or ``os.urandom`` raises ``NondeterministicCall``
(``framework.apps.determinism``: what is checked and what cannot be), a result raised to
the caller like any exception of the method.

Exactly once: the client session ``(client_id, seq)`` travels with the call; the machine
keeps a ``framework.sessions.ClientSessions`` table, the one the KV machine keeps, so a
retried call returns the first outcome and changes nothing.

Snapshots: the object's state is its public attributes (names not starting with ``_``),
msgspec-encoded; attributes annotated on the class are decoded back to their annotated
types. A class with state msgspec cannot encode overrides ``snapshot_state`` and
``restore_state``. The snapshot starts with the application's name and version
(``framework.statemachine.snapshot_header``), so a node of another application refuses
it.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Final, TypeVar

import msgspec

from framework.apps.determinism import NondeterministicCall, deterministic
from framework.canonical_msgpack import encode_canonical
from framework.core.entries import Entry, EntryKind
from framework.sessions import DEFAULT_MAX_SESSIONS, ClientSessions, Session, check_rows
from framework.statemachine import (
    BadCommand,
    BadSnapshot,
    ClientCommand,
    ClientQuery,
    CommandError,
    OutOfOrderApply,
    StaleRequest,
    app_call_request,
    decode_app_command,
    open_snapshot,
    snapshot_header,
)

__all__ = [
    "Call",
    "NondeterministicCall",
    "ObjectMachine",
    "Outcome",
    "ReplicatedError",
    "ReplicatedObject",
    "decode_outcome",
    "encode_call",
    "methods_of",
    "query",
    "replicated",
]

F = TypeVar("F", bound=Callable[..., Any])

MAX_ERROR_CHARS: Final = 2000


# -- declaring ---------------------------------------------------------------------------------


def replicated(func: F) -> F:
    """Mark a method as a command: it goes through the log and runs on every replica."""
    func._raftmw_kind = "replicated"  # type: ignore[attr-defined]
    return func


def query(func: F | None = None, *, stale: bool = False) -> Any:
    """Mark a method as a read: answered from applied state, linearizable unless
    ``stale=True`` (then any node answers from its state as it is)."""

    def mark(f: F) -> F:
        f._raftmw_kind = "stale_query" if stale else "query"  # type: ignore[attr-defined]
        return f

    return mark(func) if func is not None else mark


def methods_of(cls: type) -> dict[str, str]:
    """``{method name: "replicated" | "query" | "stale_query"}`` of a ``ReplicatedObject``."""
    found: dict[str, str] = {}
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        kind = getattr(member, "_raftmw_kind", None)
        if kind is not None:
            found[name] = kind
    return found


_CONTEXT: Final = frozenset({"now", "index"})
"""Set by the machine around each call; not state."""


class ReplicatedObject:
    """Base class of a replicated object. Its ``__init__`` takes no arguments (every
    replica builds the same initial state); ``@replicated`` methods change the state,
    ``@query`` methods read it."""

    app_name: ClassVar[str] = ""
    """The application's name (by default ``module:Class``); nodes of one cluster agree."""
    app_version: ClassVar[str] = "1"
    """Nodes whose versions differ in the major number (before the first dot) refuse each
    other."""

    now: float = 0.0
    """During a replicated method: the leader's wall-clock time when it proposed the call."""
    index: int = 0
    """During a replicated method: the log index of the call."""

    @classmethod
    def application(cls) -> str:
        return cls.app_name or f"{cls.__module__}:{cls.__qualname__}"

    def snapshot_state(self) -> object:
        """The state to snapshot (public attributes); override with ``restore_state``."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in _CONTEXT}

    def restore_state(self, state: object) -> None:
        """Replace the state with a ``snapshot_state()`` decoded to builtins."""
        if not isinstance(state, dict):
            raise BadSnapshot(f"object state is {type(state).__name__}; expected a map")
        hints = typing.get_type_hints(type(self))
        restored: dict[str, Any] = {}
        for name, value in state.items():
            hint = hints.get(name)
            try:
                restored[name] = value if hint is None else msgspec.convert(value, hint)
            except msgspec.ValidationError as exc:
                raise BadSnapshot(f"attribute {name!r}: {exc}") from None
        for name in [k for k in vars(self) if not k.startswith("_") and k not in _CONTEXT]:
            delattr(self, name)
        for name, value in restored.items():
            setattr(self, name, value)


# -- the wire ----------------------------------------------------------------------------------


class Call(msgspec.Struct, frozen=True, array_like=True):
    method: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)


class Outcome(msgspec.Struct, frozen=True, array_like=True):
    """A method's result: ``value``, or the exception ``error`` (class name) ``message``."""

    value: Any = None
    error: str = ""
    message: str = ""


class ReplicatedError(Exception):
    """An exception raised inside a replicated method (or query), raised to the caller."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error
        self.message = message


_CALL: Final = msgspec.msgpack.Decoder(Call)
_OUTCOME: Final = msgspec.msgpack.Decoder(Outcome)


def encode_call(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    try:
        return encode_canonical(Call(method, list(args), dict(kwargs)))
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"the arguments of {method}() cannot be sent: {exc}") from None


def decode_outcome(data: bytes) -> object:
    """The value of an encoded ``Outcome``; raises ``ReplicatedError`` for an exception."""
    outcome = _OUTCOME.decode(data)
    if outcome.error:
        raise ReplicatedError(outcome.error, outcome.message)
    return outcome.value


def _failure(error: str, message: str) -> bytes:
    return encode_canonical(Outcome(error=error, message=message[:MAX_ERROR_CHARS]))


# -- the machine ---------------------------------------------------------------------------------


class _ObjectSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    applied_index: typing.Annotated[int, msgspec.Meta(ge=0)]
    sessions: list[Session[bytes]]
    """Least recently used first."""
    state: msgspec.Raw


_SNAPSHOT: Final = msgspec.msgpack.Decoder(_ObjectSnapshot)


class ObjectMachine:
    """The ``StateMachine`` running one ``ReplicatedObject`` class."""

    def __init__(self, cls: type[ReplicatedObject], *, max_sessions: int = DEFAULT_MAX_SESSIONS):
        if not (isinstance(cls, type) and issubclass(cls, ReplicatedObject)):
            raise TypeError(f"{cls!r} is not a subclass of ReplicatedObject")
        self.cls = cls
        self.app_name = cls.application()
        self.app_version = cls.app_version
        self.methods = methods_of(cls)
        self.sessions: ClientSessions[bytes] = ClientSessions(max_sessions)
        self.obj: ReplicatedObject = cls()
        self._applied_index = 0

    @property
    def applied_index(self) -> int:
        return self._applied_index

    def client_request(self, body: object, *, now: float) -> ClientCommand | ClientQuery:
        """``AppCall``: a ``@replicated`` call proposed with the leader's clock, a ``@query``
        read (``framework.statemachine.app_call_request``)."""
        return app_call_request(self, body, now=now)

    def apply(self, entry: Entry) -> bytes | StaleRequest | CommandError | None:
        expected = self._applied_index + 1
        if entry.index != expected:
            raise OutOfOrderApply(
                f"entry index {entry.index} applied after index {self._applied_index}; "
                f"expected {expected}"
            )
        self._applied_index = entry.index
        if entry.kind is not EntryKind.NORMAL or not entry.data:
            return None
        try:
            command = decode_app_command(entry.data)
        except BadCommand as exc:
            return CommandError(index=entry.index, message=str(exc))
        replay = self.sessions.lookup(command.client_id, command.seq, entry.index)
        if replay is not None:  # a retry: the first outcome, nothing changes (or stale)
            return replay.result
        outcome = self._run(command.payload, now=command.time, index=entry.index)
        self.sessions.record(command.client_id, command.seq, entry.index, outcome)
        return outcome

    def _run(self, payload: bytes, *, now: float, index: int) -> bytes:
        try:
            call = _CALL.decode(payload)
        except msgspec.DecodeError as exc:
            return _failure("BadCall", f"the call does not decode: {exc}")
        if self.methods.get(call.method) != "replicated":
            return _failure(
                "BadCall",
                f"{self.app_name} has no replicated method {call.method!r}; expected one of "
                f"{sorted(m for m, k in self.methods.items() if k == 'replicated')}",
            )
        obj = self.obj
        obj.now, obj.index = now, index
        try:
            with deterministic(f"{self.cls.__qualname__}.{call.method}"):
                value = getattr(obj, call.method)(*call.args, **call.kwargs)
            return encode_canonical(Outcome(value=value))
        except Exception as exc:  # a result, the same on every replica
            return _failure(type(exc).__name__, str(exc))

    def read(self, query: object) -> bytes:
        """Run a ``@query`` method (``query`` is an encoded ``Call``)."""
        assert isinstance(query, bytes)
        try:
            call = _CALL.decode(query)
        except msgspec.DecodeError as exc:
            return _failure("BadCall", f"the query does not decode: {exc}")
        if self.methods.get(call.method) not in ("query", "stale_query"):
            return _failure(
                "BadCall",
                f"{self.app_name} has no query {call.method!r}; expected one of "
                f"{sorted(m for m, k in self.methods.items() if k != 'replicated')}",
            )
        try:
            value = getattr(self.obj, call.method)(*call.args, **call.kwargs)
            return encode_canonical(Outcome(value=value))
        except Exception as exc:
            return _failure(type(exc).__name__, str(exc))

    def snapshot(self) -> bytes:
        return snapshot_header(self) + encode_canonical(
            _ObjectSnapshot(
                applied_index=self._applied_index,
                sessions=self.sessions.rows(),
                state=msgspec.Raw(encode_canonical(self.obj.snapshot_state())),
            )
        )

    def _decode(self, data: bytes) -> _ObjectSnapshot:
        body = open_snapshot(data, self)  # another application's: refused by name
        try:
            snap = _SNAPSHOT.decode(body)
        except msgspec.DecodeError as exc:
            raise BadSnapshot(
                f"not a snapshot of a replicated object ({len(data)} bytes): {exc}"
            ) from None
        problem = check_rows(snap.sessions, snap.applied_index)
        if problem is not None:
            raise BadSnapshot(problem)
        return snap

    def check_snapshot(self, data: bytes) -> int:
        return self._decode(data).applied_index

    def restore(self, data: bytes) -> None:
        snap = self._decode(data)
        try:
            state = msgspec.msgpack.decode(snap.state)
        except msgspec.DecodeError as exc:
            raise BadSnapshot(f"the object state does not decode: {exc}") from None
        obj = self.cls()
        obj.restore_state(state)  # raises before anything here is replaced
        self.obj = obj
        self.sessions.restore(snap.sessions)
        self._applied_index = snap.applied_index
