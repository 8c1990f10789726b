"""A hostile peer for hostile-input tests: a socket that passes the peer handshake as a node
id of the cluster (with that node's certificate when the cluster runs TLS: a valid
certificate does not make a message sane) and then sends whatever frames a test gives it."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence

import msgspec

from framework.core import Message
from framework.transport.certificates import TlsDirectory
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
    tls: TlsDirectory | None = None,
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
    context = None
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
        context.check_hostname = False  # nodes are named by id in their certificates
        context.load_cert_chain(str(tls.node_cert(as_node)), str(tls.node_key(as_node)))
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        sock = context.wrap_socket(raw) if context is not None else raw
        sock.sendall(encode_frame(hello))
        try:
            sock.sendall(b"".join(frames))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return True
        if linger <= 0:
            return False
        sock.settimeout(linger)
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except (ConnectionResetError, ssl.SSLError):
            return True
        return True
