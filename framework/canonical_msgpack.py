"""Canonical msgpack: equal values encode to equal bytes, at any size and key order.

Why not ``msgspec.msgpack.Encoder(order="deterministic")``
-----------------------------------------------------------
That encoder sorts each dict's keys with a quicksort of its own (``_AssocList_sort_inner``
in msgspec's ``_core.c``, up to at least 0.23.0): median-of-three pivots, a recursive call
for the left part. Some key orders defeat the pivot choice, and then the sort takes
quadratic time and one C stack frame per key. One such order is common: a key that sorts
last inserted first, then keys in ascending order (``{"warm": ..., "key-00000000": ...,
"key-00000001": ..., ...}``). At 30,000 keys encoding it took 2.4 s instead of
milliseconds; at 100,000 keys the process died with SIGSEGV (the C stack, 8 MiB,
overflowed; a worker thread's too). For a replicated state every replica has the same dict
in the same order, so every replica would crash together, and again after each restart.

Here the keys are sorted by Python's own sort (timsort: O(n log n) whatever the order, O(n)
for runs already in order) through ``msgspec.to_builtins(order="deterministic")`` (which
uses ``list.sort``, not that quicksort), and the result is encoded as it stands. The bytes
are those ``order="deterministic"`` gives for the same value (keys sorted by code point,
which is their UTF-8 byte order; sets and frozensets sorted; struct fields in declaration
order), except that a dict whose keys are all of one sortable non-string type (ints, say) is
now encoded with its keys sorted instead of refused. Keys that cannot be compared with each
other still raise ``TypeError``.

The cost: sorting with Python's comparisons is slower than msgspec's ``memcmp`` quicksort on
orders that quicksort handles well (about 3x for 1,000,000 shuffled keys); correctness at any
order comes first. State machines that snapshot a large map should stream it unsorted
instead (``KVStateMachine.snapshot_chunks``).
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Final

import msgspec

__all__ = ["encode_canonical"]

_KEPT_AS_THEY_ARE: Final = (
    bytes,
    bytearray,
    memoryview,
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
    decimal.Decimal,
    msgspec.Raw,
    msgspec.msgpack.Ext,
)
"""Types the msgpack encoder writes natively (a timestamp, bin, ext...): ``to_builtins``
must hand them over untouched, or they would become strings and change the bytes."""

_ENCODER: Final = msgspec.msgpack.Encoder()


def encode_canonical(value: object) -> bytes:
    """``value`` as msgpack with every dict's keys and every set sorted (see the module).

    Raises what ``msgspec.msgpack.encode`` raises for a value msgpack cannot carry
    (``TypeError``, ``OverflowError``)."""
    return _ENCODER.encode(
        msgspec.to_builtins(value, builtin_types=_KEPT_AS_THEY_ARE, order="deterministic")
    )
