"""What a ``raftmw node`` process imports (issue #15: idle RSS per node). Every module costs
each node its code and objects for as long as it runs, so the node leaves out what only
other commands, tools and tests use. A one-member node runs until it serves, is stopped
with SIGTERM, and reports its ``sys.modules`` at exit."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from framework.runtime.localcluster import free_ports

# Nothing a serving node needs: the other subcommands (load generator, fault schedule,
# object and lock clients, TLS tooling), plugin commands' rendering, certificate making,
# dynaconf and importlib.metadata with the email parser (a node loads its settings and
# finds its plugins in a forked child: framework/load_apart.py), the
# test tools and the OpenTelemetry SDK (an `otel` extra the node loads only on request).
NOT_IN_A_NODE = tuple(
    f"{name}."
    for name in (
        "framework.bench_cli",
        "framework.flags_cli",
        "framework.lock_cli",
        "framework.tls_cli",
        "framework.runtime.fault_schedule",
        "framework.runtime.localcluster",
        "framework.runtime.workload",
        "framework.apps.remote",
        "cryptography",
        "rich",
        "dynaconf",
        "importlib.metadata",
        "email",
        "hypothesis",
        "pytest",
        "trio",
        "opentelemetry.sdk",
    )
)

_PROGRAM = """
import atexit, sys
atexit.register(lambda: print("MODULES", " ".join(sorted(sys.modules)), flush=True))
from framework.cli import run
sys.argv = ["raftmw", *sys.argv[1:]]
run()
"""


def test_a_serving_node_does_not_import_what_only_other_commands_use(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    command = [sys.executable, "-c", _PROGRAM, "node", "--id", "1", "--listen", address]
    command += ["--peers", f"1={address}", "--data-dir", str(tmp_path / "n1")]
    command += ["--initial-cluster", "new"]
    log = tmp_path / "node.log"
    with log.open("w") as sink:
        node = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=sink, text=True)
        try:
            deadline = time.monotonic() + 120
            while "serving at" not in log.read_text():
                assert node.poll() is None, f"node exited early:\n{log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"node never served:\n{log.read_text()[-2000:]}"
                time.sleep(0.1)
            node.send_signal(signal.SIGTERM)
            out, _ = node.communicate(timeout=60)
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
    assert node.returncode == 0, log.read_text()[-2000:]
    # "name." matches the module and its submodules, not a module whose name merely starts so.
    modules = {f"{name}." for name in out.split("MODULES", 1)[1].split()}
    assert "framework.runtime.node." in modules  # the list is the serving node's
    assert sorted(name for name in modules if name.startswith(NOT_IN_A_NODE)) == []
