"""The fault schedule of a simulated run: what goes wrong, when, and to whom.

Each tick of the fault phase, ``Faults.inject`` draws from the run's one ``random.Random``
(so a seed replays exactly) and injects: partitions (halves, an isolated node or leader, a
bridge, a majorities ring, one-way and single severed links), crashes between steps or at a
point inside a Ready (before, during or after its write, or after applying), pauses,
leadership transfers, membership changes (two at once sometimes: one change at a time must
refuse the second) and the decommissioning of removed nodes. ``Faults.heal`` ends the phase:
the network heals and calms down, paused nodes resume and crashed nodes restart.

Faults aimed at the leader (``leader_faults``, ``leader_fault_kinds``): cut it off, make it
deaf, cut it off just after its check-quorum passed, pause it, crash it (maybe part-way
through a Ready), start a transfer and deafen it, crash a minority "rack" of voters that
comes back partitioned off, and "bounce": its clients lose it, a follower pauses, then it
is cut off from its peers while another follower restarts and the paused one resumes.

The draws are made in a fixed order each tick; changing that order changes what every seed
does (and the seeds the README and the mutation check cite).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from framework.core import ConfChange, ConfChangeType, ConfState, ProposalRejected, Role
from framework.sim.network import LinkFaults, Partition
from framework.sim.nodes import SimNode

if TYPE_CHECKING:
    from framework.sim.simulator import Simulation

__all__ = ["Faults"]

CRASH_POINTS = ("before_persist", "after_persist", "after_apply")
"""Where inside a Ready a node may crash (``SimNode.crash_in_ready``)."""
TORN_CRASH_POINTS = (*CRASH_POINTS, "torn")
"""... and, with torn writes, in the middle of its write."""


class Faults:
    """Draws and injects the faults of one run's fault phase, then heals them."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.options = sim.options
        self.rng = sim.rng
        self.nodes = sim.nodes
        self.network = sim.network
        self.result = sim.result
        self.next_node_id = sim.options.nodes + 1
        """The id a membership change gives the next node it adds."""
        self.partition_until = -1
        self.cut_after_check = 0
        """A leader to cut off as soon as its check-quorum passes (its lease is longest)."""
        self.clients_cut = 0
        """A node that clients cannot reach (its client-facing network is down)."""
        self.bounce: tuple[int, int, int, int] | tuple[()] = ()
        """(tick, stage, leader, follower): the next step of the "bounce" leader fault."""

    def _leader(self) -> SimNode | None:
        """The node leading the newest term, if any."""
        best: SimNode | None = None
        for n in self.nodes.values():
            k = n.kernel
            if (
                k is not None
                and k.role is Role.LEADER
                and not n.paused
                and (best is None or (best.kernel is not None and k.term > best.kernel.term))
            ):
                best = n
        return best

    def inject(self) -> None:
        o, rng = self.options, self.rng
        rate = o.fault_rate
        running = sorted(n.id for n in self.nodes.values() if not n.removed)
        if o.pauses and rng.random() < 0.01 * rate:
            awake = [n for n in self.nodes.values() if n.kernel is not None and not n.paused]
            if awake:
                leader = self._leader()
                victim = leader if leader is not None and rng.random() < 0.5 else rng.choice(awake)
                victim.paused_until = self.sim.now + rng.randint(1, 4 * o.election_tick)
                victim.missed = 0.0
                self.result.pauses += 1
                self.sim.log(f"pause {victim.id} until {victim.paused_until}")
        if o.transfers and rng.random() < 0.01 * rate:
            leader = self._leader()
            if leader is not None:
                self._transfer(leader)
        if self.bounce and self.bounce[0] == self.sim.now:
            self._bounce_step(running)
        elif self.partition_until == self.sim.now:
            self.network.set_partition(Partition.none())
            self.sim.log("partition: none")
        if self.cut_after_check:
            node = self.nodes.get(self.cut_after_check)
            k = node.kernel if node is not None else None
            if k is None or k.role is not Role.LEADER:
                self.cut_after_check = 0
            elif node is not None and k.election_elapsed == 0:
                self.cut_after_check = 0
                self._cut_off(node, Partition.isolate(node.id, running))
        if (
            o.leader_faults
            and rng.random() < o.leader_faults
            and self.partition_until < self.sim.now
        ):
            self._leader_fault()
        if o.partitions and rng.random() < 0.02 * rate:
            kind = rng.choice(
                (
                    "none",
                    "halves",
                    "isolate_leader",
                    "bridge",
                    "ring",
                    "isolate",
                    "leader_deaf",
                    "mute",
                    "link",
                )
            )
            if kind == "halves":
                partition = Partition.halves(running, rng)
            elif kind == "isolate_leader":
                leader_id = next(
                    (
                        n.id
                        for n in self.nodes.values()
                        if n.kernel is not None and n.kernel.role is Role.LEADER
                    ),
                    running[0],
                )
                partition = Partition.isolate(leader_id, running)
            elif kind == "isolate":
                partition = Partition.isolate(rng.choice(running), running)
            elif kind == "bridge" and len(running) >= 3:
                partition = Partition.bridge(running, rng)
            elif kind == "ring" and len(running) >= 5:
                partition = Partition.majorities_ring(running)
            elif kind == "leader_deaf":
                leader = self._leader()
                partition = Partition.one_way(leader.id if leader else rng.choice(running), running)
            elif kind == "mute":
                partition = Partition.mute(rng.choice(running), running)
            elif kind == "link" and len(running) >= 2:
                a, b = rng.sample(running, 2)
                partition = Partition.sever(a, b)
            else:
                partition = Partition.none()
            self.network.set_partition(partition)
            self.sim.log(f"partition: {partition.name}")
        if o.crashes and rng.random() < 0.01 * rate:
            up = [n for n in self.nodes.values() if n.kernel is not None]
            if up:
                victim = rng.choice(up)
                if rng.random() < 0.5:
                    self.sim.crash(victim, "between steps")
                else:
                    points = TORN_CRASH_POINTS if o.torn_writes else CRASH_POINTS
                    victim.crash_in_ready = rng.choice(points)
        if o.membership and rng.random() < o.membership_rate * rate:
            self._membership_event()
            if rng.random() < 0.3:
                self._membership_event()  # at once: one change at a time must refuse it
        for node in self.nodes.values():
            if node.removed and node.kernel is not None and rng.random() < 0.05:
                # ... once every remaining voter applied the removal: with one or two
                # voters left, one that has not learnt it committed still counts the removed
                # node's vote and could never be elected.
                if not self._removal_known(node):
                    continue
                self._decommission(node, "")

    def _bounce_step(self, running: list[int]) -> None:
        """The later steps of the "bounce" leader fault."""
        assert self.bounce
        _, stage, leader_id, paused = self.bounce
        et = self.options.election_tick
        if stage == 1:
            node = self.nodes[paused]
            if node.kernel is None or node.paused:
                self.bounce = ()
                self.clients_cut = 0
                return
            cut_at = self.sim.now + self.rng.randint(et, 2 * et)
            node.paused_until = cut_at + 4
            node.missed = 0.0
            self.result.pauses += 1
            self.sim.log(f"pause {paused} until {node.paused_until}")
            self.bounce = (cut_at, 2, leader_id, paused)
            return
        self.bounce = ()
        self.clients_cut = 0
        self._cut_off(self.nodes[leader_id], Partition.isolate(leader_id, running))
        others = [
            n
            for n in self.nodes.values()
            if n.kernel is not None and n.id not in (leader_id, paused)
        ]
        if others:
            self.sim.crash(self.rng.choice(others), f"follower of leader {leader_id}, cut off")

    def _transfer(self, leader: SimNode) -> None:
        kernel = leader.kernel
        assert kernel is not None
        others = [v for v in kernel.conf_state.voters if v != leader.id]
        if not others:
            return
        to = self.rng.choice(others)
        try:
            kernel.transfer_leader(to)
        except ProposalRejected as exc:
            self.sim.log(f"transfer refused: {exc}")
            return
        self.result.transfers += 1
        self.sim.log(f"transfer {leader.id} -> {to}")
        self.sim.process(leader)

    def _leader_fault(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        rng, et = self.rng, self.options.election_tick
        running = sorted(n.id for n in self.nodes.values() if not n.removed)
        o = self.options
        kinds = ["isolate", "deaf", "after_check"]
        kinds += ["pause"] if o.pauses else []
        kinds += ["crash", "bounce"] if o.crashes else []
        kinds += ["transfer_deaf"] if o.transfers else []
        kinds += ["rack"] if o.membership else []
        if o.leader_fault_kinds:
            kinds = [k for k in o.leader_fault_kinds.split(",") if k in kinds]
            if not kinds:
                return
        kind = rng.choice(kinds)
        self.result.aimed_faults[kind] = self.result.aimed_faults.get(kind, 0) + 1
        if kind == "crash":
            # The leader dies, maybe part-way through a Ready: entries it sent may reach
            # some followers only (Figure 8's uncommitted entries of a past term).
            points = TORN_CRASH_POINTS if o.torn_writes else CRASH_POINTS
            if rng.random() < 0.5:
                self.sim.crash(leader, "leader, between steps")
            else:
                leader.crash_in_ready = rng.choice(points)
            return
        if kind == "bounce":
            # The leader's client-facing network fails (no more writes reach it); a few
            # ticks later one follower is paused, its log as up to date as the others'.
            # Later the leader is cut off from its peers, but not from its clients, while
            # another follower restarts, forgetting the heartbeat round it answered just
            # before; the paused follower resumes a few ticks after, its election timeout
            # long past (see ``_bounce_step``).
            followers = [
                n.id for n in self.nodes.values() if n.kernel is not None and n is not leader
            ]
            if len(followers) < 2:
                return
            self.clients_cut = leader.id
            self.partition_until = self.sim.now + 3 * et + 2 * self.options.max_delay + 4
            sever_at = self.sim.now + self.options.max_delay + 4
            self.bounce = (sever_at, 1, leader.id, rng.choice(followers))
            self.sim.log(f"clients cannot reach {leader.id}")
            return
        if kind == "rack":
            # A rack loses power: a minority of the voters crash together and come back on
            # the far side of a partition, re-applying their logs from their snapshots
            # (with slow apply, for a while on an older membership).
            assert leader.kernel is not None
            voters = leader.kernel.conf_state.voters
            followers = [v for v in voters if v != leader.id]
            rack = rng.sample(followers, min(len(followers), max(1, len(voters) // 2)))
            for nid in rack:
                node = self.nodes[nid]
                if node.kernel is not None:
                    self.sim.crash(node, "its rack lost power")
            side = frozenset(rack)
            rest = frozenset(running) - side
            self._cut_off(leader, Partition(name=f"rack {sorted(side)}", groups=(side, rest)))
            return
        if kind == "transfer_deaf":
            # A transfer starts and the old leader stops hearing anyone: it never learns
            # that the target won.
            self._transfer(leader)
            self._cut_off(leader, Partition.one_way(leader.id, running))
            return
        if kind == "after_check":
            self.cut_after_check = leader.id
            return
        if kind == "pause":
            leader.paused_until = self.sim.now + rng.randint(et, 4 * et)
            leader.missed = 0.0
            self.result.pauses += 1
            self.sim.log(f"pause leader {leader.id} until {leader.paused_until}")
            return
        if kind == "isolate":
            self._cut_off(leader, Partition.isolate(leader.id, running))
        else:
            self._cut_off(leader, Partition.one_way(leader.id, running))

    def _cut_off(self, leader: SimNode, partition: Partition) -> None:
        et = self.options.election_tick
        self.network.set_partition(partition)
        self.partition_until = self.sim.now + self.rng.randint(et, 4 * et)
        self.sim.log(f"partition: {partition.name} until {self.partition_until}")

    def _membership_event(self) -> None:
        leader = next(
            (
                n
                for n in self.nodes.values()
                if n.kernel is not None and n.kernel.role is Role.LEADER
            ),
            None,
        )
        if leader is None or leader.kernel is None:
            return
        kernel = leader.kernel
        conf = kernel.conf_state
        rng = self.rng
        choices: list[ConfChange] = []
        if conf.learners:
            choices.append(ConfChange(type=ConfChangeType.PROMOTE, node_id=conf.learners[0]))
        if len(conf.voters) + len(conf.learners) < self.options.nodes + 2:
            choices.append(ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=self.next_node_id))
        if len(conf.voters) > max(1, self.options.min_voters):
            choices.append(ConfChange(type=ConfChangeType.REMOVE, node_id=rng.choice(conf.voters)))
        if not choices:
            return
        change = rng.choice(choices)
        try:
            kernel.propose_conf_change(change)
        except ProposalRejected as exc:
            self.sim.log(f"membership change refused: {exc}")
            return
        self.sim.log(f"propose {change.type.value} {change.node_id} on leader {leader.id}")
        self.result.conf_changes += 1
        if change.type is ConfChangeType.ADD_LEARNER:
            self.next_node_id += 1
            self.sim.add_node(change.node_id, ConfState())
        self.sim.process(leader)

    def _removal_known(self, node: SimNode) -> bool:
        # The survivors recorded at the removal, not the node's membership now: after a
        # restart it has not re-applied its log yet and its membership is empty.
        if not node.survivors:
            return False
        for voter in node.survivors:
            other = self.nodes.get(voter)
            if other is not None and (other.kernel is None or other.applied < node.removed_at):
                return False
        return True

    def decommission_zombies(self, when: str) -> None:
        """From the heal on, the operator finishes what ``raftmw members remove`` asks of
        it: a node whose removal the voters left have all applied is stopped, whether or not
        it learnt of its removal itself (``framework.member_removal`` asks only the voters
        left, again until they all answer; the runtime's transport refuses its connections
        once they applied it, "not a known peer"). A removed node that missed its removal
        otherwise campaigns forever, and each VoteRequest of a higher term deposes a leader
        (D §4.2.3; seed 155135, pre-vote and check-quorum off) or, with no leader to hold a
        lease, ends the election under way (seed 318566: a voter left was down at the heal,
        so its operator had to wait for it). No draw: the fault phase is unchanged."""
        up = [n for n in self.nodes.values() if n.kernel is not None]
        if not up:
            return
        newest = max(up, key=lambda n: n.applied)
        conf = newest.kernel.conf_state if newest.kernel is not None else None
        if conf is None or not conf.voters:
            return
        members = set(conf.voters) | set(conf.learners)
        for node in self.nodes.values():
            at, removal = self.sim.last_change.get(node.id, (0, False))
            if node.retired or node.id in members or not removal:
                continue
            if all(self._has_applied(voter, at) for voter in conf.voters):
                self._decommission(node, when)

    def _decommission(self, node: SimNode, when: str) -> None:
        """The operator stops removed ``node`` for good (its messages in flight are lost)."""
        self.sim.log(f"decommission removed node {node.id}{when}")
        node.retired = True
        node.kernel = None
        node.paused_until = -1
        node.unfinished = None
        self.network.drop_to(node.id)

    def _has_applied(self, node_id: int, index: int) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and node.kernel is not None and node.applied >= index

    def heal(self) -> None:
        self.sim.log("heal: faults stop")
        self.sim.faulty = False
        self.clients_cut = 0
        self.network.set_partition(Partition.none())
        # Raft is live only when a round trip is well under the election timeout (§5.6:
        # broadcastTime << electionTimeout); long delays are a fault that stops here too.
        calm = max(1, min(self.network.faults.max_delay, self.options.election_tick // 4))
        self.network.faults = LinkFaults(min_delay=1, max_delay=calm)
        self.decommission_zombies(" (at the heal)")
        for node in self.nodes.values():
            node.crash_in_ready = ""
            node.deaf_until = -1
            if node.unfinished is not None:  # no crash planned in a Ready still applying
                node.unfinished = (node.unfinished[0], "")
            if node.kernel is None and not node.retired:
                self.sim.log(f"restart {node.id}")
                self.sim.start(node)
            elif node.paused and node.kernel is not None:
                self.sim.resume(node)
