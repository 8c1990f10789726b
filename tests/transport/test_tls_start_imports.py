"""A node checks its own TLS files with the standard library alone: starting a node must
not load ``cryptography`` (about 7 MiB of every node process, issue #15), while the checks
it makes (the CA issued the certificate, the certificate names this node) still hold;
``test_tls.py`` covers the errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from framework.transport.certificates import init_tls_directory


def test_loading_a_nodes_tls_does_not_import_cryptography(tmp_path: Path) -> None:
    certs = init_tls_directory(tmp_path / "tls", (1, 2))
    program = (
        "import sys\n"
        "from framework.transport.tls import load_node_tls\n"
        f"tls = load_node_tls(2, ca={str(certs.ca)!r}, cert={str(certs.node_cert(2))!r}, "
        f"key={str(certs.node_key(2))!r})\n"
        "assert tls.node_id == 2\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout[:500]
