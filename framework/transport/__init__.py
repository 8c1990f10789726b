"""Transports: how nodes reach each other and how clients reach nodes.

``Transport`` (with ``PeerInbox`` and ``ClientService``, the node's side) is the protocol;
``TcpTransport`` the default implementation and ``TcpClientConnection`` its client side;
``MemoryNetwork`` an in-process network with seeded faults for tests. ``wire`` holds the
frames and messages both TCP ends speak.
"""

from framework.transport.base import (
    ClientService,
    PeerInbox,
    Transport,
    answer_request,
    submit_request,
)
from framework.transport.memory import LinkFaults, MemoryClient, MemoryNetwork, MemoryTransport
from framework.transport.tcp import (
    DEFAULT_MAX_FRAME_SIZE,
    ConnectionLost,
    TcpClientConnection,
    TcpTransport,
    parse_address,
)
from framework.transport.wire import (
    PROTOCOL,
    PROTOCOL_VERSION,
    AdminMembers,
    AdminTransfer,
    ClientRequest,
    ClientResponse,
    ErrorReply,
    FrameDecoder,
    Goodbye,
    Hello,
    KVOp,
    PeerBatch,
    ProtocolError,
    RequestBody,
    StatusRequest,
    decode_client_request,
    decode_client_response,
    decode_hello,
    decode_peer_batch,
    encode_frame,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "PROTOCOL",
    "PROTOCOL_VERSION",
    "AdminMembers",
    "AdminTransfer",
    "ClientRequest",
    "ClientResponse",
    "ClientService",
    "ConnectionLost",
    "ErrorReply",
    "FrameDecoder",
    "Goodbye",
    "Hello",
    "KVOp",
    "LinkFaults",
    "MemoryClient",
    "MemoryNetwork",
    "MemoryTransport",
    "PeerBatch",
    "PeerInbox",
    "ProtocolError",
    "RequestBody",
    "StatusRequest",
    "TcpClientConnection",
    "TcpTransport",
    "Transport",
    "answer_request",
    "decode_client_request",
    "decode_client_response",
    "decode_hello",
    "decode_peer_batch",
    "encode_frame",
    "parse_address",
    "submit_request",
]
