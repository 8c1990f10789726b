"""Mutual TLS for raftmw connections: SSL contexts, and who a certificate says it is.

Theory of operation
-------------------
1. **One cluster CA.** Every node and client certificate is issued by it
   (``raftmw tls init``); a connection is trusted only if its certificate chains to it. Host
   names are not checked: nodes are often reached by IP address, and what matters is which
   *node* answers, so the identity lives in the certificate itself.
2. **The identity is a SAN URI.** A node's certificate names its id,
   ``raftmw://node/3``; a client's names its role, ``raftmw://client/admin`` or
   ``raftmw://client/read-write``. The acceptor checks that a peer's certificate names the
   node its ``Hello`` claims to be; the dialler checks that the node it reached is the one
   it meant to dial. A certificate that names both, or two of either, names nobody.
3. **Clients may come without a certificate** (``CERT_OPTIONAL`` on the server): a tool that
   cannot hold one authenticates with a token in its ``Hello`` instead (``framework.auth``).
   Peers always need one.
4. **Problems are found at start.** ``load_node_tls`` reads the files, checks that the key
   matches the certificate, that the CA issued it and that it names this node, and raises
   ``TlsError`` naming the setting, the file and what was expected; a node never starts
   half-configured.
5. **No close_notify wait.** A connection is closed at once, without waiting for the other
   end's close_notify (``protocol_streams`` rule 2; anyio's ``TLSStream``, the fallback off
   asyncio, is made with ``standard_compatible=False``): frames are length-prefixed, so a
   truncated stream is detected anyway, and closing must never wait on the other end.
6. **The handshake is part of opening a connection** (``protocol_streams.connect`` and
   ``Accepted.open``, with these contexts), run by the event loop's own TLS in C.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio.abc
from anyio.streams.tls import TLSAttribute

__all__ = [
    "CLIENT_URI",
    "NODE_URI",
    "CertificateIdentity",
    "NodeTls",
    "TlsError",
    "client_context",
    "identity_from_peercert",
    "identity_of",
    "load_node_tls",
    "read_certificate_identity",
    "require_tls_off_loopback",
]

NODE_URI: Final = "raftmw://node/"
CLIENT_URI: Final = "raftmw://client/"
ROLES: Final = ("read-write", "admin")


class TlsError(ValueError):
    """A TLS file or setting is wrong; the message names it, its value and what was expected."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateIdentity:
    """Who a verified certificate names: a node (``node_id``) or a client (``role``)."""

    node_id: int | None = None
    role: str | None = None
    name: str = ""
    """The subject's common name, for logs."""

    def describe(self) -> str:
        if self.node_id is not None:
            return f"node {self.node_id}"
        if self.role is not None:
            return f"client {self.name or '?'} ({self.role})"
        return f"certificate {self.name or '?'} (names no raftmw node or client)"


def _identity(uris: list[str], name: str) -> CertificateIdentity:
    nodes: list[int] = []
    roles: list[str] = []
    for uri in uris:
        if uri.startswith(NODE_URI):
            text = uri[len(NODE_URI) :]
            if text.isdigit() and 0 < int(text) < 2**63:
                nodes.append(int(text))
        elif uri.startswith(CLIENT_URI) and uri[len(CLIENT_URI) :] in ROLES:
            roles.append(uri[len(CLIENT_URI) :])
    if len(nodes) + len(roles) != 1:  # rule 2: ambiguous names nobody
        return CertificateIdentity(name=name)
    if nodes:
        return CertificateIdentity(node_id=nodes[0], name=name)
    return CertificateIdentity(role=roles[0], name=name)


def identity_from_peercert(cert: Mapping[str, object] | None) -> CertificateIdentity | None:
    """The identity in ``ssl``'s ``getpeercert()`` dict (already verified), or None."""
    if not cert:
        return None
    san = cert.get("subjectAltName", ())
    uris = [str(v) for k, v in san if k == "URI"] if isinstance(san, tuple) else []
    name = ""
    subject = cert.get("subject", ())
    if isinstance(subject, tuple):
        for rdn in subject:
            for key, value in rdn:
                if key == "commonName":
                    name = str(value)
    return _identity(uris, name)


def identity_of(stream: anyio.abc.ByteStream) -> CertificateIdentity | None:
    """The verified identity of the other end of a TLS ``stream`` (None: no certificate, or
    not TLS at all)."""
    return identity_from_peercert(stream.extra(TLSAttribute.peer_certificate, None))


def is_loopback(host: str) -> bool:
    """Whether a listener on ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "" (every interface) or a name: assume reachable


def require_tls_off_loopback(node_id: int, listen: str, host: str) -> None:
    """Secure by default: refuse to listen without TLS anywhere but on loopback."""
    if not is_loopback(host):
        raise TlsError(
            f"node {node_id} would listen on {listen} without TLS, where anyone who can "
            "reach it could pose as a peer or an operator; expected TLS (tls.ca, tls.cert "
            "and tls.key, or --tls-ca/--tls-cert/--tls-key: raftmw tls init makes them), a "
            "loopback address, or --insecure to run unauthenticated on purpose"
        )


# -- loading files ------------------------------------------------------------------------------


def _readable(key: str, path: str, expected: str) -> Path:
    if not path:
        raise TlsError(f"{key} is not set; expected {expected}")
    file = Path(path).expanduser()
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise TlsError(
            f"{key} = {path!r} cannot be read ({exc.strerror or exc}); expected {expected}"
        ) from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"{key} = {path!r} is not PEM; expected {expected}")
    return file


def read_certificate_identity(path: Path, *, key: str = "certificate") -> CertificateIdentity:
    """The identity a PEM certificate file names (first certificate in the file)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsError(f"{key} = {str(path)!r} is not a PEM certificate: {exc}") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return _identity(list(uris), str(names[0].value) if names else "")


def _context(
    purpose: ssl.Purpose, ca: Path, cert: Path | None, keyfile: Path | None, *, prefix: str
) -> ssl.SSLContext:
    server = purpose is ssl.Purpose.CLIENT_AUTH
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(
            f"{prefix}ca = {str(ca)!r} holds no usable CA certificate ({exc}); expected the "
            "cluster CA's PEM file"
        ) from None
    if cert is not None and keyfile is not None:
        try:
            context.load_cert_chain(certfile=str(cert), keyfile=str(keyfile))
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(
                f"{prefix}key = {str(keyfile)!r} does not go with {prefix}cert = "
                f"{str(cert)!r} or cannot be read ({exc}); expected the private key of that "
                "certificate, unencrypted PEM"
            ) from None
    if server:
        context.verify_mode = ssl.CERT_OPTIONAL  # rule 3: token clients; peers are checked
    else:
        context.check_hostname = False  # rule 1: the node id is checked instead
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True, slots=True)
class NodeTls:
    """A node's TLS: the context it accepts with and the one it dials with."""

    node_id: int
    server: ssl.SSLContext
    client: ssl.SSLContext


def load_node_tls(node_id: int, *, ca: str, cert: str, key: str) -> NodeTls:
    """Both contexts of node ``node_id``, after checking every file (rule 4)."""
    pem = "a PEM file"
    ca_path = _readable("tls.ca", ca, "the cluster CA certificate, " + pem)
    cert_path = _readable("tls.cert", cert, f"node {node_id}'s certificate, " + pem)
    key_path = _readable("tls.key", key, f"node {node_id}'s private key, " + pem)
    try:
        server = _context(ssl.Purpose.CLIENT_AUTH, ca_path, cert_path, key_path, prefix="tls.")
        client = _context(ssl.Purpose.SERVER_AUTH, ca_path, cert_path, key_path, prefix="tls.")
    except TlsError as exc:
        # Say first whose certificate it is, if not this node's (the likelier mistake).
        _check_names_node(read_certificate_identity(cert_path, key="tls.cert"), cert, node_id)
        raise exc from None
    try:
        presented = _handshake_with_self(server, client)
    except ssl.SSLCertVerificationError:
        raise TlsError(
            f"tls.cert = {cert!r} was not issued by the CA in {ca!r}; expected a "
            "certificate from the cluster's CA (raftmw tls init)"
        ) from None
    _check_names_node(identity_from_peercert(presented) or CertificateIdentity(), cert, node_id)
    return NodeTls(node_id=node_id, server=server, client=client)


def _check_names_node(identity: CertificateIdentity, cert: str, node_id: int) -> None:
    if identity.node_id != node_id:
        raise TlsError(
            f"tls.cert = {cert!r} is the certificate of {identity.describe()}, not of this "
            f"node ({node_id}); expected one naming {NODE_URI}{node_id} (raftmw tls init "
            "makes one per node)"
        )


def _handshake_with_self(server: ssl.SSLContext, client: ssl.SSLContext) -> dict[str, object]:
    """A TLS handshake in memory between a node's two contexts: the stdlib verifies that
    the node's certificate chains to the CA (``SSLCertVerificationError`` if not) and hands
    back the certificate as ``getpeercert()`` decodes it. A node checks its own files this
    way so that it never loads ``cryptography`` (about 7 MiB a process) to start."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    dialler = client.wrap_bio(to_client, to_server, server_side=False)
    acceptor = server.wrap_bio(to_server, to_client, server_side=True)
    done = [False, False]
    for _ in range(16):  # TLS 1.3 takes two round trips; bounded all the same
        for i, end in enumerate((dialler, acceptor)):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        if all(done):
            break
    else:
        raise TlsError("tls: a node's own certificate did not complete a TLS handshake")
    cert = dialler.getpeercert()
    return dict(cert) if cert else {}


def client_context(*, ca: str, cert: str = "", key: str = "") -> ssl.SSLContext:
    """A client's context: trusts the cluster CA, and presents ``cert`` if given (with
    ``key``). Option names in errors are the command line's."""
    ca_path = _readable("--tls-ca", ca, "the cluster CA certificate, a PEM file")
    if bool(cert) != bool(key):
        raise TlsError(
            f"--tls-cert = {cert!r} and --tls-key = {key!r}: expected both (a client "
            "certificate and its key) or neither"
        )
    cert_path = _readable("--tls-cert", cert, "a client certificate, a PEM file") if cert else None
    key_path = (
        _readable("--tls-key", key, "the client certificate's key, a PEM file") if key else None
    )
    return _context(ssl.Purpose.SERVER_AUTH, ca_path, cert_path, key_path, prefix="--tls-")
