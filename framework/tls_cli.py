"""``raftmw tls``: make a cluster's certificates and client tokens."""

from __future__ import annotations

from pathlib import Path

import click

from framework.auth import Role, hash_token, new_token
from framework.transport.tls import TlsError

__all__ = ["tls_group"]


@click.group("tls")
def tls_group() -> None:
    """Certificates (a cluster CA, one per node, admin and read-write clients) and tokens."""


@tls_group.command("init")
@click.option(
    "--nodes",
    type=click.IntRange(1, 1000),
    required=True,
    help="Make certificates for nodes 1..N.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to write them to (created).",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="A host name or address every node certificate also names (repeatable; default "
    "localhost and 127.0.0.1). raftmw checks node ids, not host names.",
)
@click.option("--force", is_flag=True, help="Replace files that exist.")
def tls_init(nodes: int, out: Path, hosts: tuple[str, ...], force: bool) -> None:
    """Make a CA, a certificate per node and an admin and a read-write client certificate.

    Each node certificate names its node id (SAN URI raftmw://node/N) and each client
    certificate its role (raftmw://client/admin, raftmw://client/read-write). Keep ca.key
    offline: whoever holds it can mint any identity.
    """
    from framework.transport.certificates import init_tls_directory

    try:
        made = init_tls_directory(
            out, range(1, nodes + 1), hosts=hosts or ("localhost", "127.0.0.1"), force=force
        )
    except TlsError as exc:
        raise click.ClickException(str(exc)) from None
    made = type(made)(made.root.resolve())
    root = made.root
    click.echo(f"wrote a CA, {nodes} node certificate(s) and 2 client certificates to {root}")
    click.echo("start node N with:")
    click.echo(
        f"  raftmw node --id N ... --tls-ca {made.ca} --tls-cert {root}/nodeN.pem "
        f"--tls-key {root}/nodeN.key"
    )
    click.echo("and use the cluster as admin with:")
    click.echo(f"  export RAFTMW_TLS_CA={made.ca}")
    click.echo(f"  export RAFTMW_TLS_CERT={made.client_cert('admin')}")
    click.echo(f"  export RAFTMW_TLS_KEY={made.client_key('admin')}")


@tls_group.command("node")
@click.option("--id", "node_id", type=click.IntRange(min=1), required=True, help="The node's id.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The directory raftmw tls init wrote (its ca.pem and ca.key issue the certificate).",
)
@click.option("--host", "hosts", multiple=True, help="A host name or address it also names.")
@click.option("--force", is_flag=True, help="Replace the node's files if they exist.")
def tls_node(node_id: int, directory: Path, hosts: tuple[str, ...], force: bool) -> None:
    """Make a certificate for one more node (before `raftmw members add`)."""
    from framework.transport.certificates import TlsDirectory

    made = TlsDirectory(directory.resolve())
    try:
        made.add_node(node_id, hosts or ("localhost", "127.0.0.1"), force=force)
    except TlsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"wrote {made.node_cert(node_id)} and {made.node_key(node_id)}; start the node with "
        f"--tls-ca {made.ca} --tls-cert {made.node_cert(node_id)} "
        f"--tls-key {made.node_key(node_id)}"
    )


@tls_group.command("token")
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    required=True,
    help="What the token may do.",
)
@click.option("--name", required=True, help="A name for the token (shown in logs and errors).")
def tls_token(role: str, name: str) -> None:
    """Make a client token: prints the token (give it to the client, as $RAFTMW_TOKEN) and
    the settings lines for the nodes, which keep only its SHA-256."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise click.BadParameter(
            f"{name!r}: expected letters, digits, - and _ (a TOML key)", param_hint="--name"
        )
    token = new_token()
    click.echo(f"token (give it to the client as RAFTMW_TOKEN; it is not stored): {token}")
    click.echo("settings for every node ([security.tokens] in a --settings file):")
    click.echo(f'  [security.tokens.{name}]\n  role = "{role}"\n  sha256 = "{hash_token(token)}"')
