"""``AppIdentity``: which application a cluster runs, and refusing to run another one.

Theory of operation
-------------------
A node runs one application (a ``StateMachine``: the KV store, a replicated object, the
lock service), named by its ``app_name`` and ``app_version``. The cluster's application is
whatever the first *app marker* in its log names: the first leader of a term that has not
applied a marker yet proposes one, naming its own application. Every node checks every
marker it applies against its own application; the first one fixes the cluster's, and a
node whose application differs (another name, or another major version) stops with
``WrongApplication`` before it applies a single command of an application it does not run.
Later markers change nothing (a node of the wrong application that won an election before
it learned the truth proposes one; the others must not stop for it).

A marker is a ``NORMAL`` entry whose data starts with ``0xc1``, a byte msgpack never uses,
so no client command can be mistaken for one; state machines see it like any entry they
cannot decode (an error result, no change but ``applied_index``).

Markers compacted into a snapshot are not replayed, but every application's snapshot starts
with its name and version (``framework.statemachine.snapshot_header``): a node restoring a
snapshot, at start or from a leader's InstallSnapshot, learns the cluster's application
from it (``restored``) and stops with ``WrongApplication`` if it runs another one. (An
InstallSnapshot of another application is refused before that, when it is checked:
``StateMachine.check_snapshot`` reads the same header.)
"""

from __future__ import annotations

from typing import Final

import msgspec

from framework.core import Entry, EntryKind
from framework.statemachine import (
    LEGACY_SNAPSHOT_APPLICATION,
    BadSnapshot,
    app_name,
    app_version,
    compatible,
    snapshot_application,
)
from framework.storage import StorageError

__all__ = ["APP_MARKER", "AppIdentity", "WrongApplication", "compatible"]

APP_MARKER: Final = b"\xc1raftmw-app\x00"


class WrongApplication(StorageError):
    """This node runs another application (or an incompatible version) than its cluster."""


class _Marker(msgspec.Struct, frozen=True, array_like=True):
    name: str
    version: str


class AppIdentity:
    """One node's application and what it has learned of its cluster's."""

    def __init__(self, node_id: int, machine: object) -> None:
        self.node_id = node_id
        self.ours = (app_name(machine), app_version(machine))
        self.cluster: tuple[str, str] | None = None
        """The application named by the first marker applied here (since the start)."""

    def marker(self) -> bytes:
        """The entry data a new leader proposes when ``cluster`` is still unknown."""
        return APP_MARKER + msgspec.msgpack.encode(_Marker(*self.ours))

    def check(self, entry: Entry) -> None:
        """Check an applied entry; raise ``WrongApplication`` if it is a marker naming an
        application this node does not run."""
        if entry.kind is not EntryKind.NORMAL or not entry.data.startswith(APP_MARKER):
            return
        try:
            marker = msgspec.msgpack.decode(entry.data[len(APP_MARKER) :], type=_Marker)
        except msgspec.DecodeError:
            return  # not a marker any correct node wrote; ignored like any bad command
        theirs = (marker.name, marker.version)
        if self.cluster is not None:
            return  # the first marker decided; a later one (a wrong node's) changes nothing
        self.cluster = theirs
        if not compatible(self.ours, theirs):
            raise WrongApplication(
                f"node {self.node_id} runs the application {self.ours[0]!r} version "
                f"{self.ours[1]}, but its cluster runs {theirs[0]!r} version {theirs[1]} "
                f"(log index {entry.index}); start it with --app naming the cluster's "
                "application, in a version with the same major number"
            )

    def restored(self, state_machine: bytes, index: int) -> None:
        """Learn the cluster's application from the state machine part of the snapshot at
        log ``index`` before it is restored; raise ``WrongApplication`` if this node runs
        another one. A snapshot without a header (written before headers existed) can only
        be the KV machine's."""
        try:
            theirs, _ = snapshot_application(state_machine)
        except BadSnapshot as exc:
            raise WrongApplication(
                f"node {self.node_id}: snapshot at index {index}: {exc}"
            ) from None
        if theirs is None:
            theirs = LEGACY_SNAPSHOT_APPLICATION
        if not compatible(self.ours, theirs):
            raise WrongApplication(
                f"node {self.node_id} runs the application {self.ours[0]!r} version "
                f"{self.ours[1]}, but its snapshot at log index {index} is of {theirs[0]!r} "
                f"version {theirs[1]}; start it with --app naming the cluster's application, "
                "in a version with the same major number"
            )
        self.cluster = theirs
