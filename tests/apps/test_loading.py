"""``--app``: which application a node runs, and the errors for what cannot run."""

from __future__ import annotations

import re

import pytest

from framework.apps.loading import BadApplication, load_application
from framework.apps.objects import ObjectMachine
from framework.runtime.app_identity import compatible
from framework.statemachine import KVStateMachine, app_name


def test_kv_is_the_default_and_installed_names_and_module_paths_load() -> None:
    assert isinstance(load_application("kv"), KVStateMachine)
    locks = load_application("locks")  # the raftmw.apps entry point
    assert isinstance(locks, ObjectMachine) and app_name(locks) == "raftmw.locks"
    account = load_application("tests.apps.objects_fixtures:Account")
    assert app_name(account) == "tests.account"
    assert isinstance(load_application("framework.statemachine:KVStateMachine"), KVStateMachine)
    tally = load_application("tests.apps.objects_fixtures:Tally")  # a hand-written machine
    assert app_name(tally) == "tests.tally"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nonsense", "expected 'kv', an installed application"),
        ("no.such.module:App", "cannot load 'no.such.module:App'"),
        ("framework.statemachine:Missing", "cannot load"),
        ("framework.statemachine:DEFAULT_MAX_SESSIONS", "expected a ReplicatedObject subclass"),
    ],
)
def test_what_cannot_run_is_refused_naming_it(spec: str, message: str) -> None:
    with pytest.raises(BadApplication, match=message):
        load_application(spec)


@pytest.mark.parametrize(
    ("ours", "theirs", "ok"),
    [
        (("a", "1"), ("a", "1.4"), True),
        (("a", "2.0"), ("a", "1.9"), False),
        (("a", "1"), ("b", "1"), False),
    ],
)
def test_compatible_means_same_name_and_major_version(
    ours: tuple[str, str], theirs: tuple[str, str], ok: bool
) -> None:
    assert compatible(ours, theirs) is ok


def test_the_first_marker_decides_and_a_node_of_another_application_stops() -> None:
    from framework.core.entries import Entry, EntryKind
    from framework.runtime.app_identity import AppIdentity, WrongApplication

    def marker(identity: AppIdentity, index: int) -> Entry:
        return Entry(index=index, term=1, kind=EntryKind.NORMAL, data=identity.marker())

    counter = AppIdentity(1, load_application("tests.apps.objects_fixtures:Account"))
    kv = AppIdentity(2, KVStateMachine())
    counter.check(marker(counter, 1))
    counter.check(marker(kv, 2))  # a later marker (a wrong node's) changes nothing
    assert counter.cluster == ("tests.account", "1")
    with pytest.raises(
        WrongApplication,
        match=re.escape(
            "node 2 runs the application 'kv' version 1, "
            "but its cluster runs 'tests.account' version 1 (log index 1)"
        ),
    ):
        kv.check(marker(counter, 1))
