"""``deterministic``: no clock and no randomness while a replicated method runs.

Theory of operation
-------------------
Every replica runs a ``@replicated`` method on the same arguments and must reach the same
state; a method that reads its own replica's clock or a random source does not. The time a
method may use is the leader's, carried in the entry (``ReplicatedObject.now``).

While a replicated method runs, ``deterministic`` replaces the module attributes through
which Python code reads a clock or randomness (``time.time``, ``time.monotonic``,
``time.perf_counter`` and their ``_ns`` forms, the ``random`` and ``secrets`` modules'
functions, ``os.urandom``, hence ``uuid.uuid4``, which reads it) with guards that raise
``NondeterministicCall`` on a thread running a replicated method. The
exception is a result like any other (``ReplicatedError`` for the caller), the same on
every replica, and the method's changes so far stay, as for any exception.

What the guard does not refuse:

* other threads: the runtime's worker threads (SQLite writes, snapshot checks) read clocks
  while a method runs on the event loop thread; a guard raises only on a thread running a
  replicated method, and calls the original elsewhere;
* ``logging``: a log record is stamped with the time; logging changes no replicated state,
  so calls from the ``logging`` package pass;
* names bound before the method ran (``from time import time``), ``datetime.now()`` (a C
  type whose methods cannot be replaced), ``random.Random`` instances, and the iteration
  order of sets of ``str``/``bytes`` (hash randomization differs between processes): those
  are not checked. This is a check where one is possible, not a sandbox.

Guards are installed by the first replicated method of a batch and taken away by the first
clock or random read outside any replicated method (the event loop reads ``time.monotonic``
between two batches), so a batch of calls applied in one Ready pays for one install, and
code outside replicated methods pays one pass-through call at most. The originals are read
again at each install, so a test's own patches survive.
"""

from __future__ import annotations

import os
import random
import secrets
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["GUARDED", "NondeterministicCall", "deterministic", "release"]


class NondeterministicCall(RuntimeError):
    """A replicated method read a clock or a random source of its own replica."""


_RANDOM_FUNCTIONS: Final = (
    "random",
    "uniform",
    "triangular",
    "randint",
    "randrange",
    "choice",
    "choices",
    "shuffle",
    "sample",
    "gauss",
    "normalvariate",
    "lognormvariate",
    "expovariate",
    "vonmisesvariate",
    "gammavariate",
    "betavariate",
    "paretovariate",
    "weibullvariate",
    "getrandbits",
    "randbytes",
    "seed",
)

GUARDED: Final[tuple[tuple[Any, str], ...]] = (
    *(
        (time, name)
        for name in (
            "time",
            "time_ns",
            "monotonic",
            "monotonic_ns",
            "perf_counter",
            "perf_counter_ns",
            "process_time",
            "process_time_ns",
        )
    ),
    *((random, name) for name in _RANDOM_FUNCTIONS if hasattr(random, name)),
    *(
        (secrets, name)
        for name in ("token_bytes", "token_hex", "token_urlsafe", "randbelow", "randbits", "choice")
    ),
    (os, "urandom"),
)
"""``(module, attribute)`` pairs replaced while a replicated method runs."""

_ADVICE: Final = {
    "time": "use self.now, the leader's clock when it proposed the call",
    "random": "derive values from the arguments, or pass a seed from the caller",
    "os": "pass random bytes from the caller as an argument",
    "secrets": "pass the secret from the caller as an argument",
}

_ALLOWED_CALLERS: Final = ("logging",)
"""Packages whose calls pass: they read a clock but change no replicated state."""


_active = threading.local()
"""``method``: the replicated method running on this thread, if any."""
_lock = threading.Lock()
_running = 0
"""Replicated methods running now, on any thread (an event loop per thread, in tests)."""
_is_installed = False


class _ModuleGuards:
    """One module's guarded attributes: installed and removed with one ``dict.update`` each
    (C loops, not one ``setattr`` per name: this runs around every batch of calls)."""

    __slots__ = ("guards", "module", "names", "original_values", "originals")

    def __init__(self, module: Any, names: list[str]) -> None:
        self.module = module
        self.names = tuple(names)
        self.originals: dict[str, Any] = {}
        self.original_values: tuple[Any, ...] = ()
        self.guards: dict[str, Any] = {}

    def install(self) -> None:
        namespace = self.module.__dict__
        current = tuple(map(namespace.get, self.names))
        if current != self.original_values:
            # Read again (a test's patch since the last install), except our own guard put
            # back by a patch undone while it was installed.
            for name, value in zip(self.names, current, strict=True):
                if value is not self.originals.get(name) and value is not self.guards.get(name):
                    self.originals[name] = value
                    self.guards[name] = _guard(self.module, name, value)
            self.original_values = tuple(map(self.originals.get, self.names))
        namespace.update(self.guards)

    def remove(self) -> None:
        self.module.__dict__.update(self.originals)


_modules: list[_ModuleGuards] = []


def _guard(module: Any, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    qualified = f"{module.__name__}.{name}"
    advice = _ADVICE[module.__name__]

    def guarded(*args: Any, **kwargs: Any) -> Any:
        method = getattr(_active, "method", None)
        if method is None:  # another thread, or outside any replicated method
            if _running == 0 and _is_installed:
                release()  # the first read after a batch of calls takes the guards away
            return original(*args, **kwargs)
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.split(".")[0] in _ALLOWED_CALLERS:
            return original(*args, **kwargs)
        raise NondeterministicCall(
            f"{qualified}() called inside the replicated method {method}: every replica "
            f"would get a different value; {advice}"
        )

    guarded.__name__ = name
    guarded.__wrapped__ = original  # type: ignore[attr-defined]  # for introspection
    return guarded


def _install() -> None:
    if not _modules:
        by_module: dict[Any, list[str]] = {}
        for module, name in GUARDED:
            by_module.setdefault(module, []).append(name)
        _modules.extend(_ModuleGuards(module, names) for module, names in by_module.items())
    for guards in _modules:
        guards.install()


def release() -> None:
    """Put the originals back unless a replicated method is running. Guards also go by
    themselves at the first clock or random read outside any replicated method."""
    global _is_installed
    with _lock:
        if _running == 0 and _is_installed:
            for guards in _modules:
                guards.remove()
            _is_installed = False


class deterministic:
    """Refuse clock and random reads on this thread while the block runs ``method``.

    A class rather than a generator-based context manager: it runs around every replicated
    call, and this is cheaper. Leaving the block leaves the guards in place (they let every
    call outside a replicated method through) until the first such call, so that a batch of
    calls applied together installs them once."""

    __slots__ = ("_method", "_outer")

    def __init__(self, method: str) -> None:
        self._method = method
        self._outer: str | None = None

    def __enter__(self) -> None:
        global _running, _is_installed
        with _lock:
            if not _is_installed:
                _install()
                _is_installed = True
            _running += 1
        self._outer = getattr(_active, "method", None)
        _active.method = self._method

    def __exit__(self, *exc: object) -> None:
        global _running
        _active.method = self._outer
        with _lock:
            _running -= 1
