"""The ``[tls]`` and ``[security]`` settings, from a settings file to a serving transport:
validated with the key named, tokens kept as hashes and honoured by the node the ``tcp``
plugin builds, and client options that name the file at fault."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from framework.auth import hash_token
from framework.cli import main
from framework.config import SettingsError, load_settings
from framework.hooks import BuildContext
from framework.transport import AdminTransfer, KVOp, TcpClientConnection
from framework.transport.certificates import init_tls_directory
from framework.transport.tls import TlsError
from plugins.tcp_transport.plugin import raftmw_make_transport

pytestmark = pytest.mark.anyio

TOKEN = "a-token-for-tests-only-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _settings(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_settings(files=[path], env={})


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[tls]\nca = "ca.pem"\n', "tls.cert", "is missing while tls.ca is set"),
        (
            '[tls]\nca = "a"\ncert = "b"\n',
            "tls.key",
            "is missing while tls.ca, tls.cert are set",
        ),
        (
            '[security.tokens.ops]\nrole = "root"\nsha256 = "' + "0" * 64 + '"\n',
            "security.tokens.ops.role",
            "is not a valid choice",
        ),
        (
            '[security.tokens.ops]\nrole = "admin"\nsha256 = "my-password"\n',
            "security.tokens.ops.sha256",
            "is not 64 hex digits",
        ),
        (
            "[security]\nmax_connections = 4\nmax_connections_per_address = 8\n",
            "security.max_connections_per_address",
            "is more than max_connections",
        ),
        ('[security]\nhandshake_frame_size = "10B"\n', "security.handshake_frame_size", ""),
    ],
)
def test_bad_security_settings_name_the_key(
    text: str, key: str, problem: str, tmp_path: Path
) -> None:
    with pytest.raises(SettingsError) as caught:
        _settings(tmp_path, text)
    assert caught.value.key == key and problem in str(caught.value)


async def test_a_token_in_the_settings_lets_a_client_act_as_its_role(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        f'[security.tokens.ops]\nrole = "admin"\nsha256 = "{hash_token(TOKEN)}"\n'
        f'[security.tokens.app]\nrole = "read-write"\nsha256 = "{hash_token(TOKEN + "x")}"\n',
    )
    assert TOKEN not in str(settings)  # only the hash is kept
    ctx = BuildContext(node_id=1, settings=settings, flags={})
    transport = raftmw_make_transport(
        ctx=ctx, kind="tcp", listen="127.0.0.1:0", peers={}, cluster_id="c"
    )
    assert transport is not None

    class Answer:
        def submit(self, request, reply):  # type: ignore[no-untyped-def]
            from framework.transport import ClientResponse

            reply(ClientResponse(id=request.id, ok=True, value="done"))

    class Inbox:
        def deliver(self, messages):  # type: ignore[no-untyped-def]
            pass

        def peer_unreachable(self, node_id):  # type: ignore[no-untyped-def]
            pass

    async with anyio.create_task_group() as tg:
        await tg.start(transport.serve, Inbox(), Answer())
        address = transport.listen_address
        expected = {TOKEN: (True, True), TOKEN + "x": (True, False), "": (False, False)}
        for token, allowed in expected.items():
            answers = []
            for body in (KVOp(op="put", key="k", value="v"), AdminTransfer(to=2)):
                async with TcpClientConnection.connect(address, timeout=5, token=token) as conn:
                    answers.append((await conn.request(body, timeout=5)).ok)
            assert tuple(answers) == allowed, token
        tg.cancel_scope.cancel()


def test_client_options_name_a_bad_file(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = tmp_path / "nope.pem"
    result = runner.invoke(
        main, ["kv", "get", "k", "--peers", "1=127.0.0.1:1", "--tls-ca", str(missing)]
    )
    assert result.exit_code == 2
    assert "--tls-ca" in result.output and "nope.pem" in result.output
    ca = init_tls_directory(tmp_path / "tls", ()).ca
    half = runner.invoke(
        main, ["status", "--peers", "1=127.0.0.1:1", "--tls-ca", str(ca), "--tls-cert", "c.pem"]
    )
    assert half.exit_code == 2 and "expected both" in half.output
    with pytest.raises(TlsError, match="without --tls-ca"):
        from framework.auth import ClientCredentials

        ClientCredentials(cert="c.pem", key="k.pem").ssl_context()


def test_tls_init_then_node_make_certificates_a_node_accepts(tmp_path: Path) -> None:
    from framework.transport.tls import load_node_tls, read_certificate_identity

    runner = CliRunner()
    out = tmp_path / "tls"
    made = runner.invoke(main, ["tls", "init", "--nodes", "2", "--out", str(out)])
    assert made.exit_code == 0, made.output
    again = runner.invoke(main, ["tls", "init", "--nodes", "2", "--out", str(out)])
    assert again.exit_code == 1 and "exists" in again.output  # nothing overwritten
    added = runner.invoke(main, ["tls", "node", "--id", "3", "--dir", str(out)])
    assert added.exit_code == 0, added.output
    load_node_tls(
        3, ca=str(out / "ca.pem"), cert=str(out / "node3.pem"), key=str(out / "node3.key")
    )
    assert read_certificate_identity(out / "admin.pem").role == "admin"
    assert (out / "ca.key").stat().st_mode & 0o077 == 0  # keys are private
