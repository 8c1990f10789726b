"""Table and property tests for the kernel's separable maths: quorum arithmetic, per-
follower progress (etcd's Progress and Inflights), and the in-memory log."""

from __future__ import annotations

import gc

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.core import Entry, EntryKind, InvalidMessage, KernelMisuse, SnapshotMeta
from framework.core.log import RaftLog
from framework.core.progress import Inflights, Progress, ProgressState
from framework.core.quorum import VoteResult, committed_index, majority, vote_result

# == quorum ====================================================================================


@pytest.mark.parametrize(("n", "m"), [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_majority(n: int, m: int) -> None:
    assert majority(n) == m


@pytest.mark.parametrize(
    ("voters", "match", "index"),
    [
        ((), {}, 0),
        ((1,), {1: 5}, 5),
        ((1, 2, 3), {1: 5, 2: 3, 3: 1}, 3),
        ((1, 2, 3), {1: 5}, 0),
        ((1, 2, 3), {1: 5, 2: 5}, 5),
        ((1, 2, 3, 4), {1: 9, 2: 7, 3: 5, 4: 2}, 5),
        ((1, 2, 3), {1: 5, 2: 5, 9: 9}, 5),  # non-voters do not count
        ((1, 2, 3, 4, 5), {1: 9, 2: 9, 4: 8, 5: 1}, 8),
    ],
)
def test_committed_index_is_the_highest_index_on_a_majority(
    voters: tuple[int, ...], match: dict[int, int], index: int
) -> None:
    assert committed_index(voters, match) == index


@given(st.dictionaries(st.integers(1, 9), st.integers(0, 100), min_size=1))
def test_committed_index_property(match: dict[int, int]) -> None:
    voters = list(match)
    idx = committed_index(voters, match)
    holders = sum(1 for v in voters if match[v] >= idx)
    assert holders >= majority(len(voters))
    assert sum(1 for v in voters if match[v] >= idx + 1) < majority(len(voters))


@pytest.mark.parametrize(
    ("voters", "votes", "result"),
    [
        ((1,), {1: True}, VoteResult.WON),
        ((1, 2, 3), {1: True}, VoteResult.PENDING),
        ((1, 2, 3), {1: True, 2: True}, VoteResult.WON),
        ((1, 2, 3), {1: True, 2: False}, VoteResult.PENDING),
        ((1, 2, 3), {1: True, 2: False, 3: False}, VoteResult.LOST),
        ((1, 2, 3, 4), {1: True, 2: True}, VoteResult.PENDING),
        ((1, 2, 3, 4), {1: True, 2: True, 3: False, 4: False}, VoteResult.LOST),
        ((1, 2, 3), {1: True, 9: True}, VoteResult.PENDING),  # 9 is not a voter
    ],
)
def test_vote_result(voters: tuple[int, ...], votes: dict[int, bool], result: VoteResult) -> None:
    assert vote_result(voters, votes) is result


# == progress ==================================================================================


def test_inflights_window() -> None:
    inf = Inflights(3)
    for i in (5, 7, 9):
        inf.add(i)
    assert inf.full()
    with pytest.raises(OverflowError):
        inf.add(11)
    inf.free_to(7)
    assert len(inf) == 1 and not inf.full()
    inf.free_to(6)
    assert len(inf) == 1
    inf.free_first()
    assert len(inf) == 0
    inf.free_first()  # freeing an empty window is harmless
    inf.add(1)
    inf.reset()
    assert len(inf) == 0


def test_progress_probe_sends_one_then_pauses() -> None:
    pr = Progress(next_index=5, max_inflight=4)
    assert pr.state is ProgressState.PROBE and not pr.is_paused()
    pr.sent_entries(6, 2)
    assert pr.is_paused() and pr.next == 5  # probing does not advance next
    assert pr.maybe_update(6)
    assert not pr.is_paused() and (pr.match, pr.next) == (6, 7)


def test_progress_replicate_advances_next_optimistically() -> None:
    pr = Progress(next_index=5, max_inflight=2)
    pr.maybe_update(4)
    pr.become_replicate()
    pr.sent_entries(6, 2)
    pr.sent_entries(8, 2)
    assert pr.next == 9 and pr.is_paused()
    pr.sent_entries(8, 0)  # an empty append takes no slot
    assert len(pr.inflights) == 2


@pytest.mark.parametrize(
    ("state", "match", "next_", "rejected", "hint", "ok", "new_next"),
    [
        (ProgressState.REPLICATE, 5, 9, 8, 6, True, 6),  # back to match + 1
        (ProgressState.REPLICATE, 5, 9, 5, 3, False, 9),  # stale: at or below match
        (ProgressState.PROBE, 0, 9, 8, 3, True, 4),  # jump to the hint
        (ProgressState.PROBE, 0, 9, 8, 20, True, 8),  # never forward past the rejection
        (ProgressState.PROBE, 0, 9, 7, 3, False, 9),  # not the probe in flight
        (ProgressState.PROBE, 5, 9, 8, 1, True, 6),  # never below match + 1
    ],
)
def test_progress_maybe_decr_to(
    state: ProgressState,
    match: int,
    next_: int,
    rejected: int,
    hint: int,
    ok: bool,
    new_next: int,
) -> None:
    pr = Progress(next_index=next_, max_inflight=4)
    pr.match = match
    if state is ProgressState.REPLICATE:
        pr.become_replicate()
        pr.next = next_
    assert pr.maybe_decr_to(rejected, hint) is ok
    assert pr.next == new_next


def test_progress_snapshot_state_pauses_until_acknowledged() -> None:
    pr = Progress(next_index=3, max_inflight=4)
    pr.become_snapshot(10)
    assert pr.is_paused() and pr.pending_snapshot == 10
    pr.maybe_update(10)
    pr.become_probe()
    assert pr.state is ProgressState.PROBE and pr.next == 11
    pr.become_snapshot(10)
    pr.snapshot_failed()
    assert pr.state is ProgressState.PROBE and pr.next == pr.match + 1


# == log =======================================================================================


def _log(terms: list[int], *, offset: int = 0, offset_term: int = 0, committed: int = 0) -> RaftLog:
    entries = [Entry(t, offset + 1 + i, EntryKind.NORMAL, b"x") for i, t in enumerate(terms)]
    return RaftLog(
        snapshot=SnapshotMeta(index=offset, term=offset_term), entries=entries, committed=committed
    )


@pytest.mark.parametrize(
    ("terms", "index", "term", "found"),
    [
        ([1, 1, 2, 2, 3, 3], 6, 2, 4),
        ([1, 1, 2, 2, 3, 3], 6, 3, 6),
        ([1, 1, 2, 2, 3, 3], 6, 0, 0),
        ([1, 1, 2, 2, 3, 3], 9, 1, 2),  # beyond the end: from the last index
        ([1, 1, 2, 2, 3, 3], 3, 5, 3),
    ],
)
def test_log_find_conflict_by_term(terms: list[int], index: int, term: int, found: int) -> None:
    assert _log(terms).find_conflict_by_term(index, term) == found


def test_log_find_conflict_by_term_stops_at_the_snapshot() -> None:
    log = _log([5, 5], offset=10, offset_term=4)
    assert log.find_conflict_by_term(12, 4) == 10


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=600),
    st.integers(1, 200),
    st.integers(1, 50),
)
def test_log_slice_respects_max_bytes_like_the_simple_definition(
    sizes: list[int], max_bytes: int, lo: int
) -> None:
    """At least one entry; then as many as fit in ``max_bytes`` of data."""
    entries = [Entry(1, i + 1, EntryKind.NORMAL, b"x" * n) for i, n in enumerate(sizes)]
    log = RaftLog(entries=entries)
    lo = min(lo, len(sizes))
    got = log.slice(lo, len(sizes) + 1, max_bytes)
    expected: list[Entry] = []
    total = 0
    for e in entries[lo - 1 :]:
        total += len(e.data)
        if expected and total > max_bytes:
            break
        expected.append(e)
    assert got == expected
    assert log.slice(lo, len(sizes) + 1) == entries[lo - 1 :]
    assert log.data_size(lo, len(sizes) + 1) == sum(e.size() for e in entries[lo - 1 :])


def test_entries_are_not_tracked_by_the_garbage_collector() -> None:
    """A log holds millions of entries; the collector walking them all cost the kernel
    about a seventh of its time. An entry holds only ints and bytes: no cycle to find."""
    entry = Entry(1, 1, EntryKind.NORMAL, b"data")
    assert not gc.is_tracked(entry)
    assert not gc.is_tracked(msgspec.msgpack.decode(msgspec.msgpack.encode(entry), type=Entry))


def test_log_slice_of_compacted_entries_is_a_caller_bug() -> None:
    log = _log([1, 1], offset=5, offset_term=1)
    with pytest.raises(KernelMisuse, match="compacted"):
        log.slice(5, 8)


def test_log_terms_and_matches() -> None:
    log = _log([2, 3], offset=4, offset_term=2)
    assert [log.term(i) for i in (3, 4, 5, 6, 7)] == [None, 2, 2, 3, None]
    assert log.matches(4, 2) and not log.matches(6, 2)
    assert (log.first_index(), log.last_index(), log.last_term()) == (5, 6, 3)


def test_log_commit_past_last_index_is_invalid() -> None:
    log = _log([1, 1])
    with pytest.raises(InvalidMessage):
        log.commit_to(3)
    log.commit_to(1)
    log.commit_to(0)  # never moves backwards
    assert log.committed == 1


def test_log_applied_bounds() -> None:
    log = _log([1, 1, 1], committed=2)
    log.applied_to(2)
    with pytest.raises(KernelMisuse):
        log.applied_to(3)
    with pytest.raises(KernelMisuse):
        log.applied_to(1)


def test_log_compact_beyond_applied_is_a_caller_bug() -> None:
    log = _log([1, 1, 1], committed=3)
    log.applied_to(1)
    with pytest.raises(KernelMisuse):
        log.compact(2)
    log.compact(1)
    assert (log.offset, log.offset_term, log.first_index()) == (1, 1, 2)


def test_log_stable_to_ignores_replaced_entries() -> None:
    log = _log([])
    log.append([Entry(1, 1), Entry(1, 2)])
    assert log.unstable_from == 1
    log.stable_to(2, 2)  # term mismatch: what was written was replaced meanwhile
    assert log.unstable_from == 1
    log.stable_to(2, 1)
    assert log.unstable_from == 3


def test_log_construction_checks_storage() -> None:
    with pytest.raises(KernelMisuse, match="not contiguous"):
        RaftLog(entries=[Entry(1, 1), Entry(1, 3)])
    with pytest.raises(KernelMisuse, match="past the last stored entry"):
        RaftLog(entries=[Entry(1, 1)], committed=2)
