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

A map of at most 15 entries cannot hurt, whatever the sort (msgspec does not even use the
quicksort below 17). So the value is first encoded as it is (no sorting: fast), and when
that shows no map of 16 entries or more (no map16/map32 header byte, 0xde or 0xdf, anywhere
in it: a false alarm only costs the slow path) msgspec's ``order="deterministic"`` encodes
it. Otherwise the keys are sorted by Python's own sort (timsort: O(n log n) whatever the
order, O(n) for runs already in order) through ``msgspec.to_builtins(order="deterministic")``
(which uses ``list.sort``, not that quicksort), and the result is encoded as it stands.

Either way the bytes are those ``order="deterministic"`` gives for the same value (keys
sorted by code point, which is their UTF-8 byte order; sets and frozensets sorted; struct
fields in declaration order), except that a dict whose keys are all of one sortable type
other than ``str`` (ints, say), which msgspec refuses to sort, is encoded with its keys
sorted. Keys that cannot be compared with each other raise ``TypeError``.

The cost of the slow path: sorting with Python's comparisons is slower than msgspec's
``memcmp`` quicksort on orders that quicksort handles well (about 3x for 1,000,000 shuffled
keys); correctness at any order comes first. State machines that snapshot a large map should
stream it unsorted instead (``KVStateMachine.snapshot_chunks``). The fast path costs a
second encoding of values that are small anyway.
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

_AS_IT_IS: Final = msgspec.msgpack.Encoder()
_DETERMINISTIC: Final = msgspec.msgpack.Encoder(order="deterministic")


def encode_canonical(value: object) -> bytes:
    """``value`` as msgpack with every dict's keys and every set sorted (see the module).

    Raises what ``msgspec.msgpack.encode`` raises for a value msgpack cannot carry
    (``TypeError``, ``OverflowError``)."""
    encoded = _AS_IT_IS.encode(value)
    if 0xDE not in encoded and 0xDF not in encoded:  # no map16 or map32 header byte
        try:
            return _DETERMINISTIC.encode(value)
        except TypeError:
            pass  # keys that are not all str: msgspec will not sort them; sorted below
    return _AS_IT_IS.encode(
        msgspec.to_builtins(value, builtin_types=_KEPT_AS_THEY_ARE, order="deterministic")
    )
