"""The cost of the decode-boundary bounds: decoding peer frames with ``decode_peer_batch``
(msgspec decode + ``validate_message`` + ``bounds.check_message``) against the same decode
without the bounds check, interleaved in one run, as a ratio of medians.

    python benchmarks/bench_decode_bounds.py [--rounds 21] [--frames 2000]

Two frame shapes: a replication frame (AppendEntries carrying 64 entries of 100 bytes) and a
heartbeat frame (16 heartbeats and responses), the two that dominate peer traffic.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from framework.core import (
    AppendEntries,
    Entry,
    Heartbeat,
    HeartbeatResponse,
    Message,
    validate_message,
)
from framework.transport.wire import _PEER, PeerBatch, _decode, decode_peer_batch, encode_frame


def _unbounded(data: bytes) -> object:
    """``decode_peer_batch`` as it was before the bounds: decode, then validate only."""
    batch = _decode(_PEER, "peer", data)
    if isinstance(batch, PeerBatch):
        for msg in batch.messages:
            validate_message(msg)
    return batch


def _frames() -> dict[str, bytes]:
    entries = tuple(Entry(7, 1001 + i, data=b"x" * 100) for i in range(64))
    append: list[Message] = [
        AppendEntries(src=1, dst=2, term=7, prev_index=1000, prev_term=7, entries=entries)
    ]
    beats: list[Message] = []
    for i in range(8):
        beats.append(Heartbeat(src=1, dst=2, term=7, commit=1000 + i, context=b"1:42"))
        beats.append(HeartbeatResponse(src=1, dst=2, term=7, context=b"1:42"))
    return {
        "append 64x100B": encode_frame(PeerBatch(messages=append))[4:],
        "16 heartbeats": encode_frame(PeerBatch(messages=beats))[4:],
    }


def _time(decode: Callable[[bytes], object], data: bytes, frames: int) -> float:
    started = time.perf_counter()
    for _ in range(frames):
        decode(data)
    return (time.perf_counter() - started) / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--frames", type=int, default=2000)
    args = parser.parse_args()
    for name, data in _frames().items():
        ratios, bounded, plain = [], [], []
        for _ in range(args.rounds):  # interleaved: both see the same machine drift
            b = _time(decode_peer_batch, data, args.frames)
            p = _time(_unbounded, data, args.frames)
            bounded.append(b)
            plain.append(p)
            ratios.append(b / p)
        ratios.sort()
        low, high = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
        print(
            f"{name}: bounded {statistics.median(bounded) * 1e6:.1f} us/frame, "
            f"unbounded {statistics.median(plain) * 1e6:.1f} us/frame, "
            f"ratio median {statistics.median(ratios):.3f} (IQR {low:.3f}-{high:.3f}, "
            f"{args.rounds} rounds x {args.frames} frames)"
        )


if __name__ == "__main__":
    main()
