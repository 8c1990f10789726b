"""A forged peer for hostile-input tests: a plain socket that passes the peer handshake as a
node id of the cluster and then sends whatever frames a test gives it."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import msgspec

from framework.core import Message
from framework.transport.wire import (
    PROTOCOL,
    PROTOCOL_VERSION,
    Hello,
    PeerBatch,
    encode_frame,
)


def batch(*messages: Message) -> bytes:
    return encode_frame(PeerBatch(messages=list(messages)))


def raw_frame(obj: object) -> bytes:
    """A frame of any msgpack value (not necessarily one the protocol knows)."""
    body = msgspec.msgpack.encode(obj)
    return len(body).to_bytes(4, "big") + body


def send_as_peer(
    address: str,
    frames: Sequence[bytes],
    *,
    as_node: int,
    cluster_id: str,
    linger: float = 0.0,
) -> bool:
    """Connect to ``address`` as peer ``as_node``, send ``frames``, and wait up to ``linger``
    seconds for the node to close the connection. Whether it did (it drops a connection
    whose frame broke the protocol)."""
    host, _, port = address.rpartition(":")
    hello = Hello(
        protocol=PROTOCOL,
        version=PROTOCOL_VERSION,
        role="peer",
        node_id=as_node,
        cluster_id=cluster_id,
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(encode_frame(hello))
        try:
            sock.sendall(b"".join(frames))
        except (BrokenPipeError, ConnectionResetError):
            return True
        if linger <= 0:
            return False
        sock.settimeout(linger)
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True
