"""Issuing a cluster's certificates: a CA, one certificate per node, client certificates.

``raftmw tls init`` and the local tools (``LocalCluster``: ``raftmw cluster``, ``demo``,
``bench``, ``compare``) use it, so TLS is on without any setup. Keys are ECDSA P-256 (fast
to make, small handshakes). Node certificates carry ``raftmw://node/<id>`` and client
certificates ``raftmw://client/<role>`` as a SAN URI (``framework.transport.tls``); node
certificates also name the host names and addresses given, for tools that check them.
Private keys are written readable by their owner only, and nothing is overwritten unless
asked.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from framework.transport.tls import CLIENT_URI, NODE_URI, ROLES, TlsError

__all__ = ["CertificateAuthority", "Issued", "TlsDirectory", "init_tls_directory"]

_CA_DAYS: Final = 3650
_LEAF_DAYS: Final = 825


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key, both PEM."""

    cert: bytes
    key: bytes

    def write(self, cert_path: Path, key_path: Path, *, force: bool = False) -> None:
        _write(cert_path, self.cert, mode=0o644, force=force)
        _write(key_path, self.key, mode=0o600, force=force)


def _write(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    if path.exists() and not force:
        raise TlsError(f"{path} exists; expected a new file (pass --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


class CertificateAuthority:
    """A cluster CA that issues node and client certificates."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, name: str = "raftmw cluster CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise TlsError(
                f"CA {cert_path} / {key_path} cannot be loaded ({exc}); expected the PEM "
                "files raftmw tls init wrote (ca.pem, ca.key)"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TlsError(f"CA key {key_path}: expected an ECDSA key (raftmw tls init)")
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def _issue(self, common_name: str, uri: str, hosts: Sequence[str], *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
        names += _alt_names(hosts)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert=cert.public_bytes(serialization.Encoding.PEM), key=_key_pem(key))

    def issue_node(self, node_id: int, hosts: Sequence[str] = ("localhost", "127.0.0.1")) -> Issued:
        """Node ``node_id``'s certificate: it both accepts and dials."""
        if node_id <= 0:
            raise TlsError(f"node id {node_id}: expected a positive node id")
        return self._issue(f"raftmw node {node_id}", f"{NODE_URI}{node_id}", hosts, server=True)

    def issue_client(self, role: str, name: str | None = None) -> Issued:
        """A client certificate carrying ``role`` (``admin`` or ``read-write``)."""
        if role not in ROLES:
            raise TlsError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        return self._issue(name or f"raftmw {role}", f"{CLIENT_URI}{role}", (), server=False)


@dataclass(frozen=True, slots=True)
class TlsDirectory:
    """The files ``init_tls_directory`` writes, by role."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    def node_cert(self, node_id: int) -> Path:
        return self.root / f"node{node_id}.pem"

    def node_key(self, node_id: int) -> Path:
        return self.root / f"node{node_id}.key"

    def client_cert(self, role: str) -> Path:
        return self.root / f"{role}.pem"

    def client_key(self, role: str) -> Path:
        return self.root / f"{role}.key"

    def authority(self) -> CertificateAuthority:
        return CertificateAuthority.load(self.ca, self.ca_key)

    def add_node(self, node_id: int, hosts: Sequence[str], *, force: bool = False) -> None:
        self.authority().issue_node(node_id, hosts).write(
            self.node_cert(node_id), self.node_key(node_id), force=force
        )


def init_tls_directory(
    out: Path,
    node_ids: Iterable[int],
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    force: bool = False,
) -> TlsDirectory:
    """A new CA in ``out`` with a certificate per node and one per client role."""
    directory = TlsDirectory(Path(out))
    ca = CertificateAuthority.create()
    _write(directory.ca, ca.cert_pem, mode=0o644, force=force)
    _write(directory.ca_key, ca.key_pem, mode=0o600, force=force)
    for node_id in node_ids:
        ca.issue_node(node_id, hosts).write(
            directory.node_cert(node_id), directory.node_key(node_id), force=force
        )
    for role in ROLES:
        ca.issue_client(role).write(
            directory.client_cert(role), directory.client_key(role), force=force
        )
    return directory
