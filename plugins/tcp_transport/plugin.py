"""Plugin ``tcp``: builds ``framework.transport.TcpTransport`` for ``transport.kind = "tcp"``.

Essential: a node needs a transport, and TCP is the one every installation has. Other
transports (an iroh/QUIC one, say) are plugins answering for their own ``kind``.
"""

from __future__ import annotations

from collections.abc import Mapping

from framework.auth import TokenBook
from framework.hooks import BuildContext, hookimpl
from framework.transport.tcp import TcpTransport
from framework.transport.tls import load_node_tls

RAFTMW_TIER = "essential"


@hookimpl
def raftmw_make_transport(
    ctx: BuildContext, kind: str, listen: str, peers: Mapping[int, str], cluster_id: str
) -> TcpTransport | None:
    if kind != "tcp":
        return None
    t = ctx.settings.transport
    tls, security = ctx.settings.tls, ctx.settings.security
    # A bad file or a certificate of another node raises TlsError here, at start.
    node_tls = (
        load_node_tls(ctx.node_id, ca=tls.ca, cert=tls.cert, key=tls.key) if tls.enabled else None
    )
    tokens = TokenBook({name: (tok.role, tok.sha256) for name, tok in security.tokens.items()})
    return TcpTransport(
        node_id=ctx.node_id,
        cluster_id=cluster_id,
        listen=listen,
        peers={k: v for k, v in peers.items() if k != ctx.node_id},
        max_frame_size=t.max_frame_size,
        max_message_size=t.max_message_size,
        connect_timeout=t.connect_timeout,
        dead_connection_timeout=t.dead_connection_timeout,
        backoff_min=t.reconnect_backoff_min,
        backoff_max=ctx.settings.reconnect_backoff_max,
        tls=node_tls,
        insecure=tls.insecure,
        tokens=tokens,
        max_connections=security.max_connections,
        max_connections_per_address=security.max_connections_per_address,
        handshake_frame_size=security.handshake_frame_size,
    )
