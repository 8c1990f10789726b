"""The `raftmw` command: node lifecycle and start-up refusals, kv/status against a live
cluster, garbage sent to a live node, `cluster`, `demo`, and settings errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from framework.cli import main
from framework.runtime.localcluster import LocalCluster, free_ports

RAFTMW = [sys.executable, "-m", "framework.cli"]


@pytest.fixture
def live(tmp_path: Path):  # type: ignore[no-untyped-def]
    local = LocalCluster(tmp_path, nodes=3, cluster_id="cli")
    local.start_all()
    anyio.run(local.wait_serving)
    yield local
    local.stop_all()


def _node_cmd(node_id: int, data_dir: Path, port: int, cluster_id: str = "cli") -> list[str]:
    return [
        *RAFTMW,
        "node",
        "--id",
        str(node_id),
        "--listen",
        f"127.0.0.1:{port}",
        "--peers",
        f"{node_id}=127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
        "--cluster-id",
        cluster_id,
        "--initial-cluster",
        "new",
    ]


def test_sigterm_shuts_a_node_down_cleanly(live: LocalCluster) -> None:
    proc = live.nodes[2].process
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_sigint_shuts_a_node_down_cleanly(live: LocalCluster) -> None:
    proc = live.nodes[3].process
    assert proc is not None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"node on port {port} never listened"
            time.sleep(0.05)


def test_a_data_dir_of_another_node_is_refused(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    data = tmp_path / "d"
    first = subprocess.Popen(_node_cmd(1, data, port), stderr=subprocess.PIPE)
    _wait_listening(port)  # it stamped the directory; now stop it cleanly
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    out = subprocess.run(_node_cmd(2, data, port), capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "node 1" in out.stderr and "node 2" in out.stderr, out.stderr


def test_a_corrupt_database_stops_the_node_naming_the_file(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    data = tmp_path / "d"
    first = subprocess.Popen(_node_cmd(1, data, port), stderr=subprocess.PIPE)
    _wait_listening(port)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    db = data / "raft.db"
    raw = bytearray(db.read_bytes())
    raw[:16] = b"garbage garbage!"
    db.write_bytes(bytes(raw))
    out = subprocess.run(_node_cmd(1, data, port), capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "raft.db" in out.stderr, out.stderr
    assert db.read_bytes()[:16] == b"garbage garbage!"  # nothing was "repaired" or discarded


def test_garbage_sent_to_a_live_node_does_not_hurt_it(live: LocalCluster) -> None:
    host, _, port = live.nodes[1].address.rpartition(":")
    payloads = [
        b"\x00\x00\x00\x05hello",
        b"GET / HTTP/1.1\r\n\r\n",
        b"\xff" * 64,
        b"\x7f\xff\xff\xff" + b"x" * 100,
    ]
    for payload in payloads:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(payload)
            s.settimeout(5)
            # The node closes the connection (possibly after a Goodbye frame).
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    runner = CliRunner(env=live.environment())
    result = runner.invoke(main, ["kv", "put", "after-garbage", "ok", "--peers", live.peers_arg()])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["kv", "get", "after-garbage", "--peers", live.peers_arg()])
    assert result.output.strip() == "ok"


def test_kv_and_status_commands(live: LocalCluster) -> None:
    runner = CliRunner(env=live.environment())
    peers = ["--peers", live.peers_arg()]
    assert runner.invoke(main, ["kv", "put", "k", "v1", *peers]).exit_code == 0
    assert runner.invoke(main, ["kv", "append", "k", "+", *peers]).output.strip() == "v1+"
    swapped = runner.invoke(main, ["kv", "cas", "k", "v1+", "v2", *peers])
    assert swapped.exit_code == 0 and "swapped" in swapped.output
    refused = runner.invoke(main, ["kv", "cas", "k", "nope", "v3", *peers])
    assert refused.exit_code == 1
    assert runner.invoke(main, ["kv", "get", "k", *peers]).output.strip() == "v2"
    assert runner.invoke(main, ["kv", "delete", "k", *peers]).exit_code == 0
    assert runner.invoke(main, ["kv", "get", "k", *peers]).exit_code == 1
    status = runner.invoke(main, ["status", "--json", *peers])
    assert status.exit_code == 0, status.output
    table = json.loads(status.output)
    roles = sorted(node["role"] for node in table.values())
    assert roles == ["follower", "follower", "leader"]
    leader = next(node for node in table.values() if node["role"] == "leader")
    assert set(leader["progress"]) == {"1", "2", "3"}
    pretty = runner.invoke(main, ["status", *peers])
    assert "leader" in pretty.output and "follower" in pretty.output


def test_bad_peers_and_flags_are_named() -> None:
    runner = CliRunner()
    bad_peers = runner.invoke(main, ["kv", "get", "k", "--peers", "one=localhost"])
    assert bad_peers.exit_code != 0 and "one" in bad_peers.output
    bad_flag = runner.invoke(
        main,
        [
            "node",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:1",
            "--peers",
            "1=127.0.0.1:1",
            "--data-dir",
            "/tmp/x",
            "--flag",
            "actors=maybe",
        ],
    )
    assert bad_flag.exit_code != 0 and "actors" in bad_flag.output and "maybe" in bad_flag.output


def test_config_check_names_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[performance.circuit_breaker]\ntimeout = "30 parsecs"\n')
    result = CliRunner().invoke(main, ["config", "check", str(bad)])
    assert result.exit_code == 1
    assert "performance.circuit_breaker.timeout" in result.output
    assert "30 parsecs" in result.output
    good = tmp_path / "good.toml"
    assert CliRunner().invoke(main, ["config", "write", str(good)]).exit_code == 0
    assert CliRunner().invoke(main, ["config", "check", str(good)]).exit_code == 0


def test_cluster_command_runs_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*RAFTMW, "cluster", "--nodes", "3", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C to stop" in line:
            break
    # It prints what a shell needs to reach it: the peers and its TLS files (admin).
    env = dict(
        line.strip().removeprefix("export ").split("=", 1)
        for line in lines
        if line.strip().startswith("export ")
    )
    assert set(env) == {"RAFTMW_PEERS", "RAFTMW_TLS_CA", "RAFTMW_TLS_CERT", "RAFTMW_TLS_KEY"}
    assert CliRunner(env=env).invoke(main, ["kv", "put", "c", "1"]).exit_code == 0
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    assert "node 1 exit 0" in rest and "node 3 exit 0" in rest


def test_demo_runs_and_checks_its_writes(tmp_path: Path) -> None:
    out = subprocess.run(
        [*RAFTMW, "demo", "--seconds", "2", "--clients", "4", "--data-dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "raftmw demo summary" in out.stdout
    assert "leader killed" in out.stdout
    verified = next(line for line in out.stdout.splitlines() if line.startswith("verified:"))
    got, total = verified.split()[1].split("/")
    assert got == total and int(total) > 0


def test_compare_and_bench_refuse_an_unknown_flag_before_starting_anything() -> None:
    result = CliRunner().invoke(main, ["compare", "--b-flag", "actorz=on"])
    assert result.exit_code == 2
    assert "--b-flag" in result.output and "actorz" in result.output
    assert "actors" in result.output  # the closest known flag is suggested
    bench = CliRunner().invoke(main, ["bench", "--flag", "backpresure=on"])
    assert bench.exit_code == 2 and "backpressure" in bench.output


def test_flags_commands_against_a_live_cluster(live: LocalCluster) -> None:
    runner = CliRunner(env=live.environment())
    peers = ["--peers", live.peers_arg()]
    listed = runner.invoke(main, ["flags", "list", "--json", *peers])
    assert listed.exit_code == 0, listed.output
    before = json.loads(listed.output)
    assert before["1"]["flags"]["backpressure"]["source"] == "PLUGIN_DEFAULT"
    changed = runner.invoke(
        main, ["flags", "set", "backpressure=on", "--reason", "stage 1", *peers]
    )
    assert changed.exit_code == 0, changed.output
    after = json.loads(runner.invoke(main, ["flags", "list", "--json", *peers]).output)
    indexes = {after[n]["flags"]["backpressure"]["log_index"] for n in ("1", "2", "3")}
    assert len(indexes) == 1 and None not in indexes  # same log index on every node
    assert {after[n]["flags"]["backpressure"]["source"] for n in after} == {"CLUSTER"}
    override = runner.invoke(main, ["flags", "set", "backpressure=off", "--node", "2", *peers])
    assert override.exit_code == 0, override.output
    got = json.loads(runner.invoke(main, ["flags", "get", "backpressure", "--json", *peers]).output)
    assert got["2"]["backpressure"]["reason"] == "OVERRIDE"
    assert got["1"]["backpressure"]["value"] is True
    history = runner.invoke(main, ["flags", "history", *peers])
    assert "backpressure=True" in history.output and "stage 1" in history.output
    unknown = runner.invoke(main, ["flags", "set", "backpresure=on", *peers])
    assert unknown.exit_code != 0 and "backpressure" in unknown.output
    plugins = runner.invoke(main, ["plugins", "--json", *peers])
    assert plugins.exit_code == 0, plugins.output
    report = json.loads(plugins.output)
    assert report["nodes"]["1"]["queue:inbox"] == "backpressure"
    assert report["nodes"]["2"]["queue:inbox"] == "legacy"
    names = {p["name"]: p for p in report["plugins"]}
    assert names["legacy"]["tier"] == "essential"
    assert "backpressure" in names["backpressure"]["flags"]


def test_blocking_a_plugin_at_start_is_checked(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    out = subprocess.run(
        [*_node_cmd(1, tmp_path / "d", port), "--plugin", "no:legacy"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "legacy" in out.stderr and "essential" in out.stderr


def test_an_unknown_transport_kind_is_named(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    out = subprocess.run(
        _node_cmd(1, tmp_path / "d", port),
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "RAFTMW_TRANSPORT__KIND": "carrier-pigeon"},
    )
    assert out.returncode != 0
    assert "transport.kind" in out.stderr and "carrier-pigeon" in out.stderr, out.stderr


def test_members_remove_returns_once_the_voters_left_applied_it(tmp_path: Path) -> None:
    """Removing the leader of a two-node cluster: once `members remove` says the node may be
    stopped, the voter left already lists only itself, so killing the removed node at once
    (SIGKILL) still leaves a cluster that elects it and takes writes. Had the command
    returned when the leader applied the removal (as it did), the voter left could still
    count the removed node's vote, and with that node gone, nobody could ever be elected."""
    with LocalCluster(tmp_path, nodes=2, cluster_id="cli") as local:
        local.start_all()
        anyio.run(local.wait_serving)
        leader = anyio.run(local.leader)
        other = 3 - leader
        runner = CliRunner(env=local.environment())
        peers = ["--peers", local.peers_arg(), "--timeout", "30"]
        removed = runner.invoke(main, ["members", "remove", str(leader), *peers])
        assert removed.exit_code == 0, removed.output
        assert f"voters [{other}] applied it: it may be stopped" in removed.output
        status = runner.invoke(main, ["status", "--json", *peers])
        assert json.loads(status.output)[str(other)]["voters"] == [other]
        local.kill(leader)
        put = runner.invoke(main, ["kv", "put", "after", "removal", *peers])
        assert put.exit_code == 0, put.output
