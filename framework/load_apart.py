"""Run a start-up load in a forked child, so the process that runs on never imports what
the load needs (``load_apart``).

Theory of operation
-------------------
Why: a node is a long-running process, and every module it imports stays resident for its
whole life (issue #15 sets a target of 40 MiB idle RSS per node). Some of its start-up work
needs libraries nothing uses afterwards: reading the settings needs dynaconf
(`framework.settings_apart`), finding the installed plugins and applications needs
``importlib.metadata`` (`framework.entry_points`). Dropping modules from ``sys.modules``
afterwards frees almost nothing (0.1 MiB measured for dynaconf: its objects stay
referenced from elsewhere). So the node never imports them: `load_apart` forks, the child
does the load, and only its result (plain frozen data, a few KB pickled) comes back
through a pipe.

Why fork and not a subprocess: the child is a copy of this process, with ``framework``
already imported and the arguments already in memory, so it starts loading at once; a new
interpreter would first start and import ``framework`` again, and the arguments would have
to travel as text. Measured on Linux for the settings (CPython 3.11, 2 shared cores, the
default profile, after importing ``framework.cli`` as a node has, medians of 8 fresh
processes): in-process 34 ms, forked 47 ms, a ``python -c`` subprocess doing the same 125
ms. Of the 13 ms the fork adds, fork, exit and waitpid take about 3; the rest is the
child's copy-on-write page faults, as the load touches (reference counts, the garbage
collector) the parent's pages. It is paid once, when a node starts.

Why only while the process has a single thread: ``fork`` copies the calling thread alone.
A lock another thread held at that moment (the import lock, a logging handler's, the C
heap's) stays held forever in the child, and the load could hang on it. A node loads
before starting any thread, so it always forks; when threads are running (or
`threading.active_count` cannot see them: threads started by C extensions are not counted,
which is why a node forks before it starts its metrics exporter or event loop) the load
runs in this process instead, with the same result. It also runs in-process when one of
the modules it keeps out is already imported (forking would then save nothing) and where
``os.fork`` does not exist (Windows). macOS has ``fork`` and it is used (untested there so
far): what makes fork unsafe on macOS, and multiprocessing's default ``spawn`` there, is
system frameworks (the Objective-C runtime, proxy lookup, Accelerate) called after a fork,
and the child only imports pure-Python modules, reads files and pickles.

The child runs the load and nothing else of its parent: it pickles either ``("ok",
result)`` or ``("error", exception)`` to the pipe and leaves with ``os._exit``, from a
``finally`` around everything it does, so no exception (not even ``KeyboardInterrupt``)
unwinds into the parent's code, no atexit handler runs, and the parent's unflushed stdio
buffers (copied by fork) are not written twice. An exception is round-tripped through
pickle in the child before it is sent, because many exceptions pickle but do not unpickle
(a constructor whose arguments are not ``args``); one that cannot make the trip is sent as
``("unpicklable", type name, message)`` instead. `SettingsError` pickles by its fields, so
the parent re-raises the same type with the same message and the command line's error
output is byte-for-byte the in-process one. Other exceptions carry the child's traceback
as a note, since a traceback does not pickle.

Unpickling is safe here because the bytes come from our own child, over an anonymous pipe
only the two processes hold, produced by the same code from the same memory image. The
parent reads the pipe to its end, then reaps the child with ``waitpid``; a child that did
not exit with status 0 (killed by a signal, or exited before writing its result) is a
`LoadApartError` naming how it ended. If the parent is interrupted while it waits, it
kills and reaps the child before the interruption goes on, so no zombie is left behind.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import TypeVar

from framework.settings_kinds import SettingsError

__all__ = ["LoadApartError", "can_load_apart", "load_apart"]

T = TypeVar("T")


class LoadApartError(RuntimeError):
    """The child doing a load ended without a result, or with an exception that could not
    be passed back as it was; the message says which."""


def load_apart(load: Callable[[], T], *, what: str, keeps_out: Iterable[str]) -> T:
    """``load()``, run in a forked child when this process can fork safely and has imported
    none of the top-level packages ``keeps_out``; else here (see the module docstring).
    ``what`` names the load in errors ("the settings").

    Raises what ``load`` raises (unchanged when it pickles), or `LoadApartError` when the
    child ended without a result.
    """
    if not can_load_apart(keeps_out):
        return load()
    return _load_in_child(load, what)


def can_load_apart(keeps_out: Iterable[str]) -> bool:
    """Whether `load_apart` forks: ``os.fork`` exists, only one thread runs, and none of
    ``keeps_out`` (top-level package names, or dotted module names) is imported yet."""
    return (
        hasattr(os, "fork")
        and threading.active_count() == 1
        and not any(name in sys.modules for name in keeps_out)
    )


def _load_in_child(load: Callable[[], T], what: str) -> T:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 1
        try:
            os.close(read_end)
            _write_all(write_end, _outcome(load, what))
            status = 0
        finally:
            # Leave from here whatever happened above: no exception unwinds into the
            # parent's code, no atexit handler runs, no copied buffer is flushed.
            os._exit(status)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    _, status = os.waitpid(pid, 0)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        raise LoadApartError(
            f"the process loading {what} (pid {pid}) {_how_it_ended(status)} without a result"
        )
    return _result(data, what)  # type: ignore[return-value]  # what load() returned


def _outcome(load: Callable[[], object], what: str) -> bytes:
    """What the child sends: the load's result, or the exception it raised."""
    try:
        return pickle.dumps(("ok", load()), pickle.HIGHEST_PROTOCOL)
    except BaseException as error:  # every outcome goes to the parent
        return _pickled_error(error, what)


def _pickled_error(error: BaseException, what: str) -> bytes:
    if not isinstance(error, SettingsError):  # a SettingsError's message says it all
        lines = traceback.format_exception(type(error), error, error.__traceback__)
        error.add_note(f"Traceback in the process loading {what}:\n" + "".join(lines))
    try:
        data = pickle.dumps(("error", error), pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)  # what the parent will do; raises if the exception cannot return
        return data
    except Exception:
        name = f"{type(error).__module__}.{type(error).__qualname__}"
        return pickle.dumps(("unpicklable", name, _message(error)), pickle.HIGHEST_PROTOCOL)


def _message(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return "(its message cannot be shown)"


def _result(data: bytes, what: str) -> object:
    kind, *payload = pickle.loads(data)  # our own child's bytes: see the module docstring
    if kind == "ok":
        (result,) = payload
        return result
    if kind == "error":
        (error,) = payload
        raise error
    name, message = payload
    raise LoadApartError(
        f"loading {what} raised {name}: {message} (in a child process; the exception "
        "could not be passed back as it was)"
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.close(fd)


def _how_it_ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"ended with wait status {status}"
