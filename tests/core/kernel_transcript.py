"""Transcripts (etcd's datadriven style): commands against a ``Cluster`` and their trace.

A transcript file is a sequence of blocks::

    # comments explaining the step (kept on --rewrite)
    command arg arg key=value
    ----
    expected output, one line per event (no blank lines)

Blocks are separated by a blank line. An empty output is written ``ok``. Commands:

``add-nodes N [voters=(1,2,3)] [learners=(4)] [config_key=value ...]``
``campaign ID``  ``propose ID DATA``  ``propose-conf-change ID TYPE NODE``
``transfer-leader FROM TO``  ``read-index ID CTX``
``tick ID N``  ``tick-election ID``  ``tick-heartbeat ID``
``process-ready ID...``  ``deliver-msgs [ID]``  ``stabilize [ID...]``
``isolate ID``  ``cut A B``  ``heal``
``status ID``  ``log ID``  ``raft-state``  ``compact ID``  ``restart ID``
``report-unreachable LEADER ID``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kernel_harness import Cluster, fmt_entry, fmt_ids

from framework.core import ConfChange, ConfChangeType, KernelError, Role

__all__ = ["Block", "parse_transcript", "render_transcript", "run_command"]


@dataclass(slots=True)
class Block:
    prelude: list[str]
    """Comment and blank lines before the command, kept verbatim."""
    command: str
    expected: list[str]
    line: int


def parse_transcript(text: str) -> list[Block]:
    blocks: list[Block] = []
    prelude: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            prelude.append(line)
            i += 1
            continue
        command, start = line.strip(), i + 1
        if i + 1 >= len(lines) or lines[i + 1].strip() != "----":
            raise ValueError(f"line {start}: command {command!r} is not followed by '----'")
        i += 2
        expected = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        blocks.append(Block(prelude=prelude, command=command, expected=expected, line=start))
        prelude = []
    if any(line.strip() for line in prelude):
        raise ValueError("trailing comments after the last command")
    return blocks


def render_transcript(blocks: list[Block], outputs: list[list[str]]) -> str:
    parts: list[str] = []
    for block, output in zip(blocks, outputs, strict=True):
        parts.extend(block.prelude)
        parts.append(block.command)
        parts.append("----")
        parts.extend(output)
    return "\n".join(parts) + "\n"


def _parse_ids(value: str) -> list[int]:
    inner = value.strip("()")
    return [int(x) for x in inner.split(",") if x.strip()]


def _config_value(value: str) -> object:
    if value in ("true", "false"):
        return value == "true"
    return int(value)


def _status_lines(cluster: Cluster, nid: int) -> list[str]:
    st = cluster.node(nid).status()
    conf = st.conf_state
    lines = [
        f"{nid}: {st.role.value} term={st.term} vote={st.vote} leader={st.leader} "
        f"commit={st.commit} applied={st.applied} log=[{st.first_index},{st.last_index}] "
        f"voters={fmt_ids(conf.voters)} learners={fmt_ids(conf.learners)}"
        + (f" transferee={st.transferee}" if st.transferee else "")
    ]
    for peer, (state, match, nxt) in sorted(st.progress.items()):
        if peer != nid:
            lines.append(f"  {peer}: {state} match={match} next={nxt}")
    return lines


def _log_lines(cluster: Cluster, nid: int) -> list[str]:
    log = cluster.node(nid).log
    lines = []
    if log.offset:
        lines.append(f"snapshot {log.offset}@t{log.offset_term}")
    entries = log.entries
    if not entries:
        lines.append("(no entries)")
    # One line per term keeps long logs readable.
    line: list[str] = []
    for entry in entries:
        if line and not line[-1].split("@t", 1)[1].startswith(f"{entry.term} "):
            lines.append(", ".join(line))
            line = []
        line.append(fmt_entry(entry))
    if line:
        lines.append(", ".join(line))
    lines.append(f"committed={log.committed} applied={log.applied}")
    return lines


def run_command(cluster: Cluster, command: str) -> list[str]:
    """Run one transcript command; returns its output lines (``["ok"]`` if none)."""
    words = command.split()
    name, args = words[0], words[1:]
    kv = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if "=" in a}
    pos = [a for a in args if "=" not in a]
    cluster.take_output()
    out: list[str] = []
    try:
        if name == "add-nodes":
            voters = _parse_ids(kv.pop("voters")) if "voters" in kv else None
            learners = _parse_ids(kv.pop("learners")) if "learners" in kv else ()
            config = {k: _config_value(v) for k, v in kv.items()}
            ids = cluster.add_nodes(int(pos[0]), voters=voters, learners=learners, **config)
            for nid in ids:
                conf = cluster.records[nid].bootstrap
                out.append(
                    f"added {nid}: voters={fmt_ids(conf.voters)} learners={fmt_ids(conf.learners)}"
                )
        elif name == "campaign":
            cluster.node(int(pos[0])).campaign()
        elif name == "propose":
            index = cluster.node(int(pos[0])).propose(pos[1].encode())
            out.append(f"index {index}")
        elif name == "propose-conf-change":
            change = ConfChange(type=ConfChangeType(pos[1]), node_id=int(pos[2]))
            index = cluster.node(int(pos[0])).propose_conf_change(change)
            out.append(f"index {index}")
        elif name == "transfer-leader":
            cluster.node(int(pos[0])).transfer_leader(int(pos[1]))
        elif name == "read-index":
            cluster.node(int(pos[0])).read_index(pos[1].encode())
        elif name == "tick":
            cluster.tick(int(pos[0]), int(pos[1]))
        elif name == "tick-election":
            n = cluster.tick_election(int(pos[0]))
            out.append(f"{n} ticks")
        elif name == "tick-heartbeat":
            cluster.tick_heartbeat(int(pos[0]))
        elif name == "process-ready":
            for nid in map(int, pos):
                if not cluster.process_ready(nid):
                    cluster.out.append(f"> {nid} no ready")
        elif name == "deliver-msgs":
            cluster.deliver(int(pos[0]) if pos else None)
        elif name == "stabilize":
            cluster.stabilize([int(p) for p in pos] if pos else None)
        elif name == "isolate":
            cluster.isolate(int(pos[0]))
        elif name == "cut":
            cluster.cut(int(pos[0]), int(pos[1]))
        elif name == "heal":
            cluster.heal()
        elif name == "status":
            out.extend(_status_lines(cluster, int(pos[0])))
        elif name == "log":
            out.extend(_log_lines(cluster, int(pos[0])))
        elif name == "raft-state":
            for nid in cluster.ids:
                node = cluster.node(nid)
                role = node.role.value
                mark = " *" if node.role is Role.LEADER else ""
                out.append(
                    f"{nid}: {role} term={node.term} leader={node.leader} "
                    f"commit={node.log.committed} last={node.log.last_index()}{mark}"
                )
        elif name == "compact":
            snap = cluster.compact(int(pos[0]))
            out.append(f"snapshot {snap.meta.index}@t{snap.meta.term}")
        elif name == "restart":
            cluster.restart(int(pos[0]))
            out.extend(_status_lines(cluster, int(pos[0])))
        elif name == "report-unreachable":
            cluster.node(int(pos[0])).report_unreachable(int(pos[1]))
        else:
            raise ValueError(f"unknown transcript command {name!r}")
    except KernelError as exc:
        out.append(f"error: {type(exc).__name__}: {exc}")
    lines = cluster.take_output() + out
    return lines or ["ok"]


def run_file(path: Path) -> tuple[list[Block], list[list[str]]]:
    blocks = parse_transcript(path.read_text())
    cluster = Cluster(seed=0)
    outputs = [run_command(cluster, block.command) for block in blocks]
    return blocks, outputs
